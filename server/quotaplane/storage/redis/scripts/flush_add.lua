-- flush_add.lua: add recorded usage (RecordUsage) to a month counter, once it is seeded.
--
-- KEYS[1]  the seed marker of (tenant, metric, month)
-- KEYS[2]  the month counter consume.lua checks
-- ARGV[1]  units to add
-- ARGV[2]  expiry of the counter (unix ms)
--
-- Returns 1 if added. An unseeded counter is left alone: the events are already in the
-- ledger, and the seed (flush_seed.lua) will read them from there; adding them here too would
-- count them twice.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
return 1
