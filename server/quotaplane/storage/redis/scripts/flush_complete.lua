-- flush_complete.lua: forget a pending flush record the ledger has applied.
--
-- KEYS[1]  the pending record
-- KEYS[2]  the tenant's set of pending flush ids
-- ARGV[1]  the flush id
--
-- Deleting twice is harmless: two replicas may both finish replaying the same record.

redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
