-- flush_take.lua: move a tenant's unflushed usage into a pending flush record, atomically.
--
-- KEYS[1]  the tenant's unflushed hash (consume.lua adds admitted units to it)
-- KEYS[2]  the pending record to create, named by the fresh flush id
-- KEYS[3]  the tenant's set of pending flush ids (so a replay finds them without SCAN)
-- KEYS[4]  the tenant's ledger generation (see flush_seed.lua): bumped, since these units
--          are now on their way to the ledger
-- ARGV[1]  the flush id
-- ARGV[2]  how long the generation is kept (ms): longer than any seed takes
--
-- Returns the record's fields and values (HGETALL), or an empty array when there was nothing
-- to flush. RENAME moves the hash in one step: a CheckQuota that runs after it starts a new
-- unflushed hash, so no unit is both in the record and left behind. All keys share the
-- tenant's hash tag, so this runs unchanged on Redis Cluster.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return redis.call('HGETALL', KEYS[2])
