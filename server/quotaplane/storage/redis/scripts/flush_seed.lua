-- flush_seed.lua: seed a month counter from the ledger plus the usage still in Redis, once.
--
-- KEYS[1]  the month counter consume.lua checks (consume.lua refuses to charge it while it
--          is missing, so nothing is admitted on it until this script has run)
-- KEYS[2]  the tenant's unflushed hash; its pending flush records are KEYS[2]:<flush id>,
--          their ids in KEYS[3] (all under the tenant's hash tag, like flush_take.lua's)
-- KEYS[3]  the tenant's set of pending flush ids
-- KEYS[4]  the tenant's ledger generation: flush_take.lua, flush_complete.lua and (for usage
--          recorded while the counter is missing) flush_add.lua bump it
-- ARGV[1]  units the ledger holds for the metric and month
-- ARGV[2]  expiry of the counter (unix ms): the month's end plus a grace
-- ARGV[3]  the generation read (flush_snapshot.lua) before the ledger was
-- ARGV[4]  the metric; ARGV[5], ARGV[6] the month's start and end (unix seconds)
-- ARGV[7..] pending flush ids the ledger had applied when ARGV[1] was read (already in it)
--
-- Returns 1 if this call seeded, 0 if the counter exists already, -1 if the generation moved
-- since the snapshot: usage may have left Redis for the ledger after ARGV[1] was read, so the
-- caller reads again. With the generation unchanged, the pending records are exactly those of
-- the snapshot and nothing was taken or completed since, so every admitted unit is counted
-- once: in the ledger, in the unflushed hash, or in a pending record the ledger lacks.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[3] then
  return -1
end

local metric, first, last = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local function month_units(hash)
  local total = 0
  local fields = redis.call('HGETALL', hash)
  for i = 1, #fields, 2 do
    -- "<metric>|<hour>"; the "<metric>|<hour>|overage" fields are a part of those units
    local name, hour = string.match(fields[i], '^(.*)|(%d+)$')
    hour = tonumber(hour)
    if name == metric and hour >= first and hour < last then
      total = total + tonumber(fields[i + 1])
    end
  end
  return total
end

local applied = {}
for i = 7, #ARGV do
  applied[ARGV[i]] = true
end
local units = tonumber(ARGV[1]) + month_units(KEYS[2])
for _, flush_id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not applied[flush_id] then
    units = units + month_units(KEYS[2] .. ':' .. flush_id)
  end
end
redis.call('SET', KEYS[1], units, 'PXAT', ARGV[2])
return 1
