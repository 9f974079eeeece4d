-- flush_add.lua: add recorded usage (RecordUsage) to a month counter, once it is seeded.
--
-- KEYS[1]  the month counter consume.lua checks
-- KEYS[2]  the tenant's ledger generation (see flush_seed.lua)
-- ARGV[1]  units to add
-- ARGV[2]  expiry of the counter (unix ms)
--
-- Returns 1 if added. A missing (unseeded) counter is left alone: the events are already in
-- the ledger, and the seed (flush_seed.lua) will read them from there; adding them here too
-- would count them twice. The generation is bumped instead, so a seed that read the ledger
-- before these events landed reads it again.

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
  return 0
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
