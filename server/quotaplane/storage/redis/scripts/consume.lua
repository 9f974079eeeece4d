-- consume.lua: check and consume one CheckQuota atomically, all limits or none, with the
-- tenant's spend cap in the same step.
--
-- KEYS[1]          unflushed hash of the tenant (admitted units the ledger has not taken yet)
-- KEYS[2..n+1]     one counter per limit, in the order of the limit arguments
-- KEYS[n+2..n+m+1] spend cap: the month counter of each charged metric (m = 0: no cap)
-- KEYS[n+m+2]      the shadow hash (admitted calls a shadow limit would have refused)
-- KEYS[n+m+3]      optional: the dedup key of the request id
-- ARGV[1] cost     units to consume (>= 1)
-- ARGV[2] dry_run  "1": decide and report, change nothing
-- ARGV[3] n        number of limits
-- ARGV[4]          dedup expiry, unix milliseconds (PEXPIREAT)
-- ARGV[5]          unflushed field for the units, ARGV[6] the field for overage units
-- ARGV[7]          the request's record (what was asked, which limits answered), kept with
--                  the first decision of a request id
-- ARGV[8]          shadow hash: the field suffix "|<hour start>", ARGV[9] its expiry (unix ms)
-- ARGV[10..]       per limit (STRIDE): limit, policy ("block" | "bill"), counter expiry (unix
--                  ms), seeded ("1": a period counter seeded from the ledger), mode
--                  ("enforce" | "shadow"), name ("<metric>/<window>")
-- then the spend section (domain/billing/spend_cap.py says why it is exact):
--                  m; when m > 0: cap (minor units), base fee (minor units), divisor (atoms per
--                  minor unit), self (1..m: the request's metric), self_limit (the limit
--                  counting the same month counter, 0: none), month counter expiry (unix ms),
--                  then per metric: included, segments s, and per segment: lower, upper (-1:
--                  open), start, base, price, step, safe_steps.
--
-- Returns {replayed (0|1), "allowed,used_1,...,used_n|overage|shadow|spend"}: allowed = 1
-- admitted, 0 refused by a limit, 2 refused by the spend cap; used = the counter after this
-- decision (before it for denials and dry runs); overage = the units of this call past a
-- "bill" limit (the largest excess over those limits; for a dry run, what it would be);
-- shadow = the 1-based indices of shadow limits that would have refused the call, joined by
-- ":"; spend = the month's invoice total in minor units after the call (now, when refused),
-- empty without a cap. This script is the one place those rules are computed: the engine
-- reports what it returns. A replay returns {1, "<record>\n<string>"}: the record and the
-- string kept with the first decision, before anything is charged.
-- Returns {2, ""} (a limit's counter) or {2, "<j>"} (the j-th spend counter) and changes
-- nothing when a seeded counter is missing (never seeded this period, or lost by Redis):
-- counting it from zero would hand out quota the ledger has already used up. The caller
-- seeds it from the ledger and calls again.
-- Every number is an integer below 2^53, so Lua's doubles hold them exactly.
-- All keys share one hash tag, so this runs unchanged on Redis Cluster.

local cost = tonumber(ARGV[1])
local dry_run = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local STRIDE = 6
local FIRST = 10
local spend_at = FIRST + n * STRIDE
local m = tonumber(ARGV[spend_at])
local shadow_key = KEYS[n + m + 2]
local dedup = KEYS[n + m + 3]

if dedup then
  local first = redis.call('GET', dedup)
  if first then
    return {1, first}
  end
end

local used = {}
for i = 1, n do
  local counter = redis.call('GET', KEYS[i + 1])
  if not counter and ARGV[FIRST + (i - 1) * STRIDE + 3] == '1' then
    return {2, ''}
  end
  used[i] = tonumber(counter or '0')
end

-- floor(a / b) for non-negative integers, corrected for the rounding of the division
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- one metric's invoice line in minor units, at most cap + 1; at = its first argument
local function line(at, usage, cap, divisor)
  local billable = usage - tonumber(ARGV[at])
  if billable <= 0 then
    return 0
  end
  local segments = tonumber(ARGV[at + 1])
  for s = 0, segments - 1 do
    local p = at + 2 + s * 7
    local upper = tonumber(ARGV[p + 1])
    if billable > tonumber(ARGV[p]) and (upper < 0 or billable <= upper) then
      local steps = idiv(billable - tonumber(ARGV[p + 2]) + tonumber(ARGV[p + 5]) - 1,
        tonumber(ARGV[p + 5]))
      if steps > tonumber(ARGV[p + 6]) then
        return cap + 1
      end
      local atoms = tonumber(ARGV[p + 3]) + tonumber(ARGV[p + 4]) * steps
      return math.min(cap + 1, idiv(2 * atoms + divisor, 2 * divisor))
    end
  end
  return cap + 1
end

local allowed = 1
local overage = 0
local shadow = {}
for i = 1, n do
  local base = FIRST + (i - 1) * STRIDE
  local excess = used[i] + cost - tonumber(ARGV[base])
  if excess > 0 then
    if ARGV[base + 4] == 'shadow' then
      shadow[#shadow + 1] = i
    elseif ARGV[base + 1] == 'block' then
      allowed = 0
    else -- "bill": admitted past the limit, the excess billed as overage
      overage = math.max(overage, math.min(cost, excess))
    end
  end
end

local spend = ''
local self_key, self_limit, month_expiry
if m > 0 then
  local cap = tonumber(ARGV[spend_at + 1])
  local divisor = tonumber(ARGV[spend_at + 3])
  local self = tonumber(ARGV[spend_at + 4])
  self_limit = tonumber(ARGV[spend_at + 5])
  month_expiry = ARGV[spend_at + 6]
  self_key = KEYS[n + 1 + self]
  local total = tonumber(ARGV[spend_at + 2])
  local before = total
  local at = spend_at + 7
  for j = 1, m do
    local counter = redis.call('GET', KEYS[n + 1 + j])
    if not counter then
      return {2, tostring(j)}
    end
    local usage = tonumber(counter)
    before = before + line(at, usage, cap, divisor)
    if j == self then
      usage = usage + cost
    end
    total = total + line(at, usage, cap, divisor)
    at = at + 2 + tonumber(ARGV[at + 1]) * 7
  end
  if allowed == 1 and total > cap then
    allowed = 2
  end
  if allowed == 1 and not dry_run then
    spend = string.format('%d', total)
  else
    spend = string.format('%d', before)
  end
end
if allowed ~= 1 then
  overage = 0
end

if allowed == 1 and not dry_run then
  for i = 1, n do
    local base = FIRST + (i - 1) * STRIDE
    used[i] = redis.call('INCRBY', KEYS[i + 1], cost)
    redis.call('PEXPIREAT', KEYS[i + 1], ARGV[base + 2])
  end
  if self_key and self_limit == 0 then
    redis.call('INCRBY', self_key, cost)
    redis.call('PEXPIREAT', self_key, month_expiry)
  end
  redis.call('HINCRBY', KEYS[1], ARGV[5], cost)
  if overage > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[6], overage)
  end
  for _, i in ipairs(shadow) do
    redis.call('HINCRBY', shadow_key, ARGV[FIRST + (i - 1) * STRIDE + 5] .. ARGV[8], 1)
  end
  if #shadow > 0 then
    redis.call('PEXPIREAT', shadow_key, ARGV[9])
  end
end

local encoded = tostring(allowed)
for i = 1, n do
  encoded = encoded .. ',' .. string.format('%d', used[i])
end
encoded = encoded .. '|' .. string.format('%d', overage) .. '|' .. table.concat(shadow, ':')
encoded = encoded .. '|' .. spend
if dedup and not dry_run then
  redis.call('SET', dedup, ARGV[7] .. '\n' .. encoded, 'PXAT', ARGV[4])
end
return {0, encoded}
