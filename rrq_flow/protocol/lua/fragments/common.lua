--[[
  Shared helpers, included at the top of every script (`-- #include common`).

  Every key a script touches either comes in KEYS or is built here from the pipeline prefix
  ARGV[1] = "rrq:{<pipeline>}:". The braces are a Redis Cluster hash tag, so derived keys live in
  the same slot as the declared ones. Per-job keys put their type before the id ("job:<id>",
  "errors:<id>", "children:<id>", "args:<id>", "result:<id>", "fanout:<epoch>:<id>"), so no job id can name another job's key
  (an epoch is digits only, so "fanout:<epoch>:" ends at its first colon).

  Check before the first write: Redis does not roll a script back, so every script first reads and
  checks everything it will touch (key types, ARGV) with the `check_*` helpers below, which raise
  an error reply, and only then writes. An error reply therefore always means nothing was written.
]]
local rcall = redis.call
local PREFIX = ARGV[1]

-- Server time in ms: the only clock any decision uses (workers' clocks may disagree).
local function now_ms()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Redis (7.0) formats each Lua number given to redis.call with printf("%.17g"): ~0.5-0.8 µs
-- an argument on a small VM, as much as a short command. A value written per job is therefore
-- given as a string: a digit, or a whole number made once per call (the last one is kept).
-- Anything else (a fraction, 1e14 or more) stays a number, for Redis to format as before.
local num_memo, num_memo_s
local function num_str(n)
  if n >= 0 and n < 10 and n % 1 == 0 then return string.char(48 + n) end
  if n == num_memo then return num_memo_s end
  if n % 1 ~= 0 or n <= -1e14 or n >= 1e14 then return n end
  num_memo, num_memo_s = n, tostring(n)
  return num_memo_s
end

local function job_key(id) return PREFIX .. 'job:' .. id end
-- A value longer than a listpack value (Redis' hash-max-listpack-value, 64 bytes by default)
-- would turn the record into a full hash table (about 4 times the memory, and never back), so
-- it is kept beside the record instead.
local LONG_VALUE = 64
-- A job's arguments, "<bytes of args>:<args JSON><kwargs JSON>", are in its record's
-- `packed_args` field when they fit a listpack value (no key of their own to create, read and
-- delete per job), else beside the record in args:<id>. A success drops them either way
-- (unless the queue has keep_args).
local function args_key(id) return PREFIX .. 'args:' .. id end
-- A result longer than LONG_VALUE is kept in result:<id>; the record then has no `result` field.
local function result_key(id) return PREFIX .. 'result:' .. id end
local function errors_key(id) return PREFIX .. 'errors:' .. id end
local function children_key(id) return PREFIX .. 'children:' .. id end
local function fanout_key(id, epoch) return PREFIX .. 'fanout:' .. epoch .. ':' .. id end
local function unique_key(ukey) return PREFIX .. 'unique:' .. ukey end
local function queue_key(queue) return PREFIX .. 'q:' .. queue end
local function wake_key(queue) return PREFIX .. 'q:' .. queue .. ':wake' end
local function stats_key(queue) return PREFIX .. 'q:' .. queue .. ':stats' end
local function dead_key(queue) return PREFIX .. 'q:' .. queue .. ':dead' end

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

-- The ready ZSETs of a queue, highest priority first (q:<queue> stands for priority 0). Checks
-- the type of the level index (check_read is defined below; called at run time).
local check_read
local function ready_levels(base)
  local keys = {}
  local placed = false
  for _, p in ipairs(check_read('ZREVRANGE', base .. ':prio', 0, -1)) do
    if not placed and tonumber(p) < 0 then
      keys[#keys + 1] = base
      placed = true
    end
    keys[#keys + 1] = base .. ':p:' .. p
  end
  if not placed then keys[#keys + 1] = base end
  return keys
end

-- --- checks (call them all before the first write) ---------------------------------------------

-- Abort with an error reply; only ever called before the script's first write. (A string, not
-- a {err=...} table: Redis 6.2, the embedded server, cannot raise a table.)
local function refuse(msg)
  error('rrq-flow: ' .. msg .. '; nothing was written', 0)
end

-- The key is missing or of type `want` ('hash', 'list', 'zset', 'string'); else refuse.
-- Returns 'none' or `want` as it was at the first check of the key in this script.
local checked = {}
local function check_type(key, want)
  local seen = checked[key]
  if seen then return seen end
  local t = rcall('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    refuse('key ' .. key .. ' is a ' .. t .. ', expected a ' .. want ..
      ' (written by something other than rrq-flow?)')
  end
  checked[key] = t
  return t
end

-- A read as a check: `cmd key ...` through redis.pcall; a key of the wrong type is refused.
-- One call instead of TYPE then the read (the write phase may then use the key freely).
check_read = function(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r['err'] then
    refuse('key ' .. key .. ' is of another type than rrq-flow writes there (' .. r['err'] ..
      '; written by something other than rrq-flow?)')
  end
  return r
end

local function check_hmget(key, ...) return check_read('HMGET', key, ...) end

-- The length of a list, read as its type check (a list is never empty in Redis: 0 means the key
-- is missing). One call instead of TYPE then LLEN; later check_type calls of the key are free.
local function check_len(key)
  local n = check_read('LLEN', key)
  checked[key] = n == 0 and 'none' or 'list'
  return n
end

-- ARGV[i] as a number, or refuse.
local function check_num(i, what)
  local n = tonumber(ARGV[i])
  if not n then refuse('ARGV[' .. i .. '] (' .. what .. ') is not a number: ' .. tostring(ARGV[i])) end
  return n
end

-- The ARGV after the first `fixed` come in groups of `size`.
local function check_groups(fixed, size, what)
  if #ARGV < fixed or (#ARGV - fixed) % size ~= 0 then
    refuse('expected ' .. fixed .. ' arguments then groups of ' .. size .. ' (' .. what ..
      '), got ' .. #ARGV)
  end
end


-- The ready ZSET a job of priority `prio` goes into, and the level index.
local function check_ready(base, prio)
  local key = ready_key_for(base, prio)
  check_type(key, 'zset')
  if key ~= base then
    check_type(base .. ':prio', 'zset') -- add_ready lists a level other than 0 there
    if not tonumber(prio) then refuse('priority is not a number: ' .. prio) end
  end
end

-- The keys of a queue that a new job of that queue is put into or counted in.
local function check_queue_new(queue)
  check_type(queue_key(queue), 'zset')
  check_type(wake_key(queue), 'list')
  check_type(stats_key(queue), 'hash')
end

-- The keys of a queue that a job of that queue may be moved into or counted in.
local function check_queue(queue)
  check_queue_new(queue)
  check_type(dead_key(queue), 'zset')
end

-- A job's record and everything a transition may touch through it: error list, child index,
-- unique key, the ready level of its priority.
local function check_job(id)
  local jk = job_key(id)
  check_type(jk, 'hash')
  check_type(errors_key(id), 'list')
  check_type(children_key(id), 'list')
  local f = rcall('HMGET', jk, 'unique_key', 'queue', 'priority')
  if f[1] and f[1] ~= '' then check_type(unique_key(f[1]), 'string') end
  if f[2] then check_ready(queue_key(f[2]), f[3]) end
  return jk
end

-- --- writes -------------------------------------------------------------------------------------

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
    local uk = unique_key(ukey)
    if rcall('GET', uk) == id then rcall('DEL', uk) end
  end
end

-- `cmd key items...` for a Lua list of any length (unpack is limited to a few thousand values),
-- 1000 at a time (an even number: ZADD's score, member pairs stay together).
local function call_chunked(cmd, key, items)
  for i = 1, #items, 1000 do
    rcall(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

local function push_all(key, items) call_chunked('RPUSH', key, items) end

-- DEL a Lua list of keys of any length.
local function del_all(keys)
  for i = 1, #keys, 1000 do rcall('DEL', unpack(keys, i, math.min(i + 999, #keys))) end
end

-- The staged children of a big fan-out's attempt: one "\0"-joined string per child (stage.lua):
-- queue, id, max attempts, when, unique key, priority, kind (next | join | out), branch index,
-- args JSON (for kind join: the value), kwargs JSON.
-- Nil when malformed.
local function split_child(entry)
  local out, pos = {}, 1
  for _ = 1, 9 do
    local z = string.find(entry, '\0', pos, true)
    if not z then return nil end
    out[#out + 1] = string.sub(entry, pos, z - 1)
    pos = z + 1
  end
  out[10] = string.sub(entry, pos)
  return out
end

-- An attempt that ends without committing its fan-out leaves no staged children behind.
local function drop_staging(jk, id)
  local epoch = rcall('HGET', jk, 'epoch')
  if epoch then rcall('UNLINK', fanout_key(id, epoch)) end
end

-- A finished job's keys expire together after the result TTL (its arguments too: a failed or
-- cancelled job keeps them, like a dead one, so that it can be inspected).
local function expire_job(jk, id, ttl_ms)
  rcall('PEXPIRE', jk, ttl_ms)
  rcall('PEXPIRE', errors_key(id), ttl_ms)
  rcall('PEXPIRE', children_key(id), ttl_ms)
  rcall('PEXPIRE', args_key(id), ttl_ms)
  rcall('PEXPIRE', result_key(id), ttl_ms)
end

-- The stored form of a job's arguments, and back (args JSON, kwargs JSON; '[]', '{}' if none).
local function pack_args(args, kwargs)
  return #args .. ':' .. args .. kwargs
end

local function unpack_args(blob)
  if not blob then return '[]', '{}' end
  local colon = string.find(blob, ':', 1, true)
  local n = tonumber(string.sub(blob, 1, colon - 1))
  return string.sub(blob, colon + 1, colon + n), string.sub(blob, colon + n + 1)
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

-- Fencing check shared by complete / fail / release / refresh, on the record's fields
-- {status, epoch, owner, settled}. Returns nil when the caller still owns the attempt (same
-- epoch and owner, job active), else a verdict: 'ALREADY_DONE' when this very owner+epoch
-- already settled it with the same operation (a retry after a lost reply), 'STALE' otherwise
-- (someone else owns it now, or it is gone).
local function owner_verdict(f, epoch, owner, op)
  if not f[1] then return 'STALE' end
  if f[2] ~= epoch or f[3] ~= owner then return 'STALE' end
  if f[1] == 'active' then return nil end
  if f[4] == op then return 'ALREADY_DONE' end
  return 'STALE'
end

-- The same, read from the record. Returns the job's status when the caller owns the attempt,
-- else nil plus the verdict. Read-only.
local function check_owner(jk, epoch, owner, op)
  local f = rcall('HMGET', jk, 'status', 'epoch', 'owner', 'settled')
  local verdict = owner_verdict(f, epoch, owner, op)
  if verdict then return nil, verdict end
  return f[1], nil
end

-- Finish a job that has no attempts left or must not retry: dead-letter it (kept until requeued
-- or purged) or, with dead_letter off, record it as failed and let the record expire.
-- Keys checked by the caller: check_job(id), check_queue(queue).
local function finish_dead(jk, id, queue, now, dead_letter, ttl_ms, reason)
  release_unique(jk, id)
  if dead_letter == '1' then
    rcall('HSET', jk, 'status', 'dead', 'finished_at', now, 'dead_reason', reason)
    rcall('ZADD', dead_key(queue), now, id)
    rcall('HINCRBY', stats_key(queue), 'dead', 1)
    return 'DEAD'
  end
  rcall('HSET', jk, 'status', 'failed', 'finished_at', now, 'dead_reason', reason)
  expire_job(jk, id, ttl_ms)
  rcall('HINCRBY', stats_key(queue), 'failed', 1)
  return 'FAILED'
end
