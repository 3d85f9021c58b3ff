--[[
  Shared helpers, included at the top of every script (`-- #include common`).

  Every key a script touches either comes in KEYS or is built here from the pipeline prefix
  ARGV[1] = "rrq:{<pipeline>}:". The braces are a Redis Cluster hash tag, so derived keys live in
  the same slot as the declared ones: job records ("job:<id>"), their error lists, unique keys and
  the keys of a child job's queue are derived this way because their names are only known from
  the data.
]]
local rcall = redis.call
local PREFIX = ARGV[1]

-- Server time in ms: the only clock any decision uses (workers' clocks may disagree).
local function now_ms()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return PREFIX .. 'job:' .. id end

-- Priorities: the ready jobs of priority 0 live in q:<queue> itself, those of priority P in
-- q:<queue>:p:<P>, and q:<queue>:prio lists the levels in use (score = P). Every level is a ZSET
-- scored by ready time, so deferred jobs and FIFO within a priority work as before, and a
-- pipeline that never sets a priority never touches a level key.
local function ready_key_for(base, prio)
  if prio == nil or prio == false or prio == '' or prio == '0' then return base end
  return base .. ':p:' .. prio
end

local function add_ready(base, prio, score, id)
  local key = ready_key_for(base, prio)
  rcall('ZADD', key, score, id)
  if key ~= base then rcall('ZADD', base .. ':prio', tonumber(prio), prio) end
end

-- The ready ZSETs of a queue, highest priority first (q:<queue> stands for priority 0).
local function ready_levels(base)
  local keys = {}
  local placed = false
  for _, p in ipairs(rcall('ZREVRANGE', base .. ':prio', 0, -1)) do
    if not placed and tonumber(p) < 0 then
      keys[#keys + 1] = base
      placed = true
    end
    keys[#keys + 1] = base .. ':p:' .. p
  end
  if not placed then keys[#keys + 1] = base end
  return keys
end
local function queue_key(queue) return PREFIX .. 'q:' .. queue end
local function wake_key(queue) return PREFIX .. 'q:' .. queue .. ':wake' end
local function stats_key(queue) return PREFIX .. 'q:' .. queue .. ':stats' end

-- One wake-up token is enough: a woken worker that leaves ready jobs behind wakes the next.
local function wake(key)
  if rcall('LLEN', key) == 0 then rcall('RPUSH', key, '1') end
end

-- A slot of a queue capped by max_running came free: wake one worker waiting for it (claim
-- sets cap_wait when it left ready jobs behind at the cap). Costs one HDEL when no cap is set.
local function slot_freed(flow_key, queue_wake_key)
  if rcall('HDEL', flow_key, 'cap_wait') == 1 then wake(queue_wake_key) end
end

-- Release a unique key, but only if it still points at this job (its owner).
local function release_unique(jk, id)
  local ukey = rcall('HGET', jk, 'unique_key')
  if ukey and ukey ~= '' then
    local uk = PREFIX .. 'unique:' .. ukey
    if rcall('GET', uk) == id then rcall('DEL', uk) end
  end
end

-- Finished-jobs ring: 8 buckets of 10 s, for "throughput over the last minute" without SCAN.
local function count_finished(tput_key, now, n)
  if n == 0 then return end
  local bucket = math.floor(now / 10000)
  local slot = tostring(bucket % 8)
  if tonumber(rcall('HGET', tput_key, 'b' .. slot) or '-1') ~= bucket then
    rcall('HSET', tput_key, 'b' .. slot, bucket, 'c' .. slot, 0)
  end
  rcall('HINCRBY', tput_key, 'c' .. slot, n)
end

-- Fencing check shared by complete / fail / release / refresh. Returns the job's status when the
-- caller still owns the attempt (same epoch and owner, job active), else nil plus a verdict:
-- 'ALREADY_DONE' when this very owner+epoch already settled it with the same operation (a retry
-- after a lost reply), 'STALE' otherwise (someone else owns it now, or it is gone).
local function check_owner(jk, epoch, owner, op)
  local f = rcall('HMGET', jk, 'status', 'epoch', 'owner', 'settled')
  if not f[1] then return nil, 'STALE' end
  if f[2] ~= epoch or f[3] ~= owner then return nil, 'STALE' end
  if f[1] == 'active' then return f[1], nil end
  if f[4] == op then return nil, 'ALREADY_DONE' end
  return nil, 'STALE'
end

-- Finish a job that has no attempts left or must not retry: dead-letter it (kept until requeued
-- or purged) or, with dead_letter off, record it as failed and let the record expire.
local function finish_dead(jk, id, queue, now, dead_letter, ttl_ms, reason)
  release_unique(jk, id)
  if dead_letter == '1' then
    rcall('HSET', jk, 'status', 'dead', 'finished_at', now, 'dead_reason', reason)
    rcall('ZADD', PREFIX .. 'q:' .. queue .. ':dead', now, id)
    rcall('HINCRBY', stats_key(queue), 'dead', 1)
    return 'DEAD'
  end
  rcall('HSET', jk, 'status', 'failed', 'finished_at', now, 'dead_reason', reason)
  rcall('PEXPIRE', jk, ttl_ms)
  rcall('PEXPIRE', jk .. ':errors', ttl_ms)
  rcall('HINCRBY', stats_key(queue), 'failed', 1)
  return 'FAILED'
end
