-- flush_seed.lua: seed a month counter from the ledger once, after Redis lost it.
--
-- KEYS[1]  the seed marker of (tenant, metric, month)
-- KEYS[2]  the month counter consume.lua checks
-- ARGV[1]  units the ledger holds for that month
-- ARGV[2]  expiry of both keys (unix ms): the month's end plus a grace
--
-- Returns 1 if this call seeded, 0 if the counter was seeded already. The marker and the
-- counter live and die together (same Redis, same expiry), so a Redis that lost its data has
-- lost the marker too, and the next CheckQuota seeds again.

if not redis.call('SET', KEYS[1], '1', 'NX', 'PXAT', ARGV[2]) then
  return 0
end
if tonumber(ARGV[1]) > 0 then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return 1
