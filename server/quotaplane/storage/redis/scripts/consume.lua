-- consume.lua: check and consume one CheckQuota atomically, all limits or none.
--
-- KEYS[1]          unflushed hash of the tenant (admitted units the ledger has not taken yet)
-- KEYS[2..n+1]     one counter per limit, in the order of the limit arguments
-- KEYS[n+2]        optional: the dedup key of the request id
-- ARGV[1] cost     units to consume (>= 1)
-- ARGV[2] dry_run  "1": decide and report, change nothing
-- ARGV[3] n        number of limits
-- ARGV[4]          dedup expiry, unix milliseconds (PEXPIREAT)
-- ARGV[5]          unflushed field for the units, ARGV[6] the field for overage units
-- ARGV[7]          the request's record (what was asked, which limits answered), kept with
--                  the first decision of a request id
-- ARGV[8..]        per limit: limit, policy ("block" | "bill"), counter expiry (unix ms),
--                  seeded ("1": the counter is a period counter seeded from the ledger)
--
-- Returns {replayed (0|1), "allowed,used_1,...,used_n|overage"}: used = the counter after
-- this decision (before it for denials and dry runs); overage = the units of this call past a
-- "bill" limit (the largest excess over those limits; for a dry run, what it would be). This
-- script is the one place that rule is computed: the engine reports what it returns. A replay returns {1, "<record>\n<string>"}:
-- the record and the string kept with the first decision, before anything is charged.
-- Returns {2, ""} and changes nothing when a seeded counter is missing (never seeded this
-- period, or lost by Redis): counting it from zero would hand out quota the ledger has
-- already used up. The caller seeds it from the ledger and calls again.
-- All keys share one hash tag, so this runs unchanged on Redis Cluster.

local cost = tonumber(ARGV[1])
local dry_run = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local dedup = KEYS[n + 2]

if dedup then
  local first = redis.call('GET', dedup)
  if first then
    return {1, first}
  end
end

local STRIDE = 4
local used = {}
for i = 1, n do
  local counter = redis.call('GET', KEYS[i + 1])
  if not counter and ARGV[7 + (i - 1) * STRIDE + 4] == '1' then
    return {2, ''}
  end
  used[i] = tonumber(counter or '0')
end

local allowed = 1
local overage = 0
for i = 1, n do
  local base = 7 + (i - 1) * STRIDE
  local excess = used[i] + cost - tonumber(ARGV[base + 1])
  if excess > 0 then
    if ARGV[base + 2] == 'block' then
      allowed = 0
    else -- "bill": admitted past the limit, the excess billed as overage
      overage = math.max(overage, math.min(cost, excess))
    end
  end
end
if allowed == 0 then
  overage = 0
end

if allowed == 1 and not dry_run then
  for i = 1, n do
    local base = 7 + (i - 1) * STRIDE
    used[i] = redis.call('INCRBY', KEYS[i + 1], cost)
    redis.call('PEXPIREAT', KEYS[i + 1], ARGV[base + 3])
  end
  redis.call('HINCRBY', KEYS[1], ARGV[5], cost)
  if overage > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[6], overage)
  end
end

local encoded = tostring(allowed)
for i = 1, n do
  encoded = encoded .. ',' .. string.format('%d', used[i])
end
encoded = encoded .. '|' .. string.format('%d', overage)
if dedup and not dry_run then
  redis.call('SET', dedup, ARGV[7] .. '\n' .. encoded, 'PXAT', ARGV[4])
end
return {0, encoded}
