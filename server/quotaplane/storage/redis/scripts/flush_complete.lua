-- flush_complete.lua: forget a pending flush record the ledger has applied.
--
-- KEYS[1]  the pending record
-- KEYS[2]  the tenant's set of pending flush ids
-- KEYS[3]  the tenant's ledger generation (see flush_seed.lua)
-- ARGV[1]  the flush id
-- ARGV[2]  how long the generation is kept (ms): longer than any seed takes
--
-- Deleting twice is harmless: two replicas may both finish replaying the same record.

redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
