-- flush_snapshot.lua: what a counter seed reads from Redis before it reads the ledger.
--
-- KEYS[1]  the tenant's ledger generation (see flush_seed.lua)
-- KEYS[2]  the tenant's set of pending flush ids
--
-- Returns {generation, flush_id...}, read at one instant.

local found = redis.call('SMEMBERS', KEYS[2])
table.insert(found, 1, redis.call('GET', KEYS[1]) or '0')
return found
