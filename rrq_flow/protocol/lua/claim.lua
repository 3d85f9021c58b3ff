--[[
  Claim up to N ready jobs of one queue for one worker.

  KEYS[1] meta HASH       KEYS[2] queue ZSET (score = ready time, ms; priority 0, and the base
          of the priority levels KEYS[2]:p:<P>, listed in KEYS[2]:prio)
  KEYS[3] retry ZSET (score = due time)    KEYS[4] active ZSET (score = lease deadline, ms)
  KEYS[5] wake LIST       KEYS[6] flow HASH (paused_until, tat, cap_wait)
  ARGV[1] key prefix      ARGV[2] generation the worker knows     ARGV[3] worker id
  ARGV[4] max jobs N      ARGV[5] lease ms      ARGV[6] hard lease ms (timeout + lock_extension)
  ARGV[7] ms between starts under rate_limit (0: none)   ARGV[8] rate_burst
  ARGV[9] max_running (0: none)   ARGV[10] rate lookahead ms (starts due that soon are granted)

  Returns: {'LOST', generation-or-''} when the pipeline's data is gone or replaced, else
  {'OK', now, next_due (ms, -1 if nothing waits), count, then per job:
   id, epoch, attempt, max_attempts, args, kwargs, enqueued_at, parent, start_at (server ms;
   later than now for a start the rate limit granted ahead: the worker waits until then),
   then held: '' | 'paused' | 'rate' | 'cap'} -- why ready jobs were left (next_due is then
  when the pause ends, -1 if it has no end; when to claim again for the rate's next start; -1 for cap:
  the slot-freeing script wakes a waiter).
  Checks before the first write: the numbers in ARGV, the type of every declared key and of every
  priority level (by TYPE, or by a read through pcall that refuses a wrong type), and of every
  job record it may touch with its arguments (the due retries, and each level's due entries up
  to the N-th claimable one, read once: the claim takes a prefix of what the checks read); an
  error reply means nothing was written.
  Invariant: a job leaves the queue only together with entering `active`, with a new epoch and
  its owner and lease recorded. Nothing is held only by a key with a TTL: the active entry is
  what brings the job back if the worker dies or this reply is lost. Flow control: nothing
  starts while paused; at most max_running jobs are in `active` (counted from the index itself,
  so a reaped or settled job gives its slot back with no counter to drift); starts follow GCRA
  on this server's clock (see docs/configuration.md for the bound).
  Retry-safe: a repeat after a lost reply claims other jobs (or none); the jobs of the lost reply
  sit in `active` and return through the reaper when their lease runs out.
]]
-- #include common

local worker = ARGV[3]
local want, lease_ms, hard_ms = check_num(4, 'max jobs'), check_num(5, 'lease ms'),
  check_num(6, 'hard lease ms')
local interval, burst, cap = check_num(7, 'rate interval ms'), check_num(8, 'rate burst'),
  check_num(9, 'max running')
local lookahead = check_num(10, 'rate lookahead ms')
-- Keys written before they are read are checked by type; the others by their first read
-- (check_read): meta, the retry set, the level index and each level, the flow hash.
check_type(KEYS[4], 'zset')
check_type(KEYS[5], 'list')
local gen = check_read('HGET', KEYS[1], 'generation')
if gen ~= ARGV[2] then return { 'LOST', gen or '' } end
local now = now_ms()
local now_s = num_str(now)
local WAITING = { queued = true, scheduled = true, retrying = true }

-- Check the records this call can touch: the due retries (and the level each goes back to),
-- and in each priority level the due entries up to the want-th claimable one (the claim below
-- visits a prefix of each level, so it never reaches past these). Each check reads, in the same
-- call, what the claim needs of the record (and its arguments, for a job it may claim).
local recs, blobs = {}, {}
local function check_candidate(id)
  local f = recs[id]
  if f then return f end
  local jk = job_key(id)
  f = check_hmget(jk, 'status', 'epoch', 'attempts', 'claims', 'max_attempts', 'enqueued_at',
    'parent', 'priority', 'packed_args')
  recs[id] = f
  if WAITING[f[1]] then
    local blob, where = f[9], jk
    if not blob then -- longer arguments: beside the record
      where = args_key(id)
      blob = redis.pcall('GET', where)
      if type(blob) == 'table' and blob['err'] then
        refuse('key ' .. where .. ' is not a string')
      end
    end
    if not blob then
      -- A record written by an older rrq-flow keeps its arguments in the record itself.
      local old = rcall('HMGET', jk, 'args', 'kwargs')
      blob = pack_args(old[1] or '[]', old[2] or '{}')
    elseif not tonumber(string.match(blob, '^(%d+):')) then
      refuse('key ' .. where .. ' does not hold job arguments')
    end
    blobs[id] = blob
  end
  return f
end
-- The earliest retry: when it is not due yet (or there is none), that one read is all this call
-- needs of the retry set, its type check and next_due's input included.
local rhead = check_read('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local due = {}
if #rhead > 0 and tonumber(rhead[2]) <= now then
  due = rcall('ZRANGEBYSCORE', KEYS[3], '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, 1000)
end
for i = 1, #due, 2 do
  check_ready(KEYS[2], check_candidate(due[i])[8])
end
-- The ids read here, per level in order: the claim below takes a prefix of them (unless due
-- retries join the levels first: then it reads the levels again).
local levels, seen = ready_levels(KEYS[2]), {}
for _, level in ipairs(levels) do
  local offset, claimable, list = 0, 0, {}
  seen[level] = list
  if want <= 0 then check_type(level, 'zset') end
  for _ = 1, 10 do
    if claimable >= want then break end
    local ids = check_read('ZRANGEBYSCORE', level, '-inf', now_s, 'LIMIT', offset, want - claimable)
    if #ids == 0 then break end
    offset = offset + #ids
    for _, id in ipairs(ids) do
      list[#list + 1] = id
      if WAITING[check_candidate(id)[1]] then claimable = claimable + 1 end
    end
  end
end

-- Paused: nothing moves (a pause with no end has paused_until -1).
local paused_until = tonumber(check_read('HGET', KEYS[6], 'paused_until') or '0')
if paused_until < 0 or paused_until > now then
  return { 'OK', now, paused_until, 0, 'paused' }
end

-- How many starts flow control allows now, and why not more.
local allowed, held = want, ''
local tat, tau
if cap > 0 then
  local free = cap - rcall('ZCARD', KEYS[4])
  if free < allowed then allowed, held = math.max(free, 0), 'cap' end
end
if interval > 0 then
  -- GCRA on this server's clock: tat is when the next start is due at the steady rate; tau lets
  -- burst - 1 extra starts through after a quiet spell. Starts due within `lookahead` ms are
  -- granted now with their exact start time (the worker waits for it before running the job),
  -- so a worker that wakes up a little late does not slow the rate down, and the spacing of
  -- the recorded starts is exact: any window [t, t + period) holds at most n + burst - 1.
  tat = tonumber(rcall('HGET', KEYS[6], 'tat') or '0')
  if tat < now then tat = now end
  tau = (burst - 1) * interval
  local k = math.floor((now + lookahead - (tat - tau)) / interval) + 1
  if k < 0 then k = 0 end
  if k < allowed then allowed, held = k, 'rate' end
end
want = allowed

-- Retries whose backoff is over become ready again (bounded work per call).
local promoted = false
for i = 1, #due, 2 do
  -- Only a job still waiting for its retry moves; a stray entry (record gone or the job already
  -- settled elsewhere) is just dropped: an HSET here would create a phantom job record.
  local f = recs[due[i]]
  if f[1] == 'retrying' then
    add_ready(KEYS[2], f[8], due[i + 1], due[i])
    rcall('HSET', job_key(due[i]), 'status', 'queued')
    f[1] = 'queued'
    promoted = true
  end
end
if #due > 0 then
  local members = {}
  for i = 1, #due, 2 do members[#members + 1] = due[i] end
  rcall('ZREM', KEYS[3], unpack(members))
end

local out = { 'OK', now, -1, 0 }
local count = 0
local leases = {} -- the active entries, added at once
-- A job started now (no rate limit) has these; strings, made once (see num_str).
local lease_now_s, hard_now_s = num_str(now + lease_ms), num_str(now + hard_ms)
-- Claim job `id` (its record read by check_candidate above: no read here) if it is waiting; a
-- missing record (expired, purged) or a finished job is dropped, never blocks the rest.
local function claim_one(id)
  local f = check_candidate(id)
  if not WAITING[f[1]] then return end
  local epoch = tonumber(f[2] or '0') + 1
  local attempt = tonumber(f[3] or '0') + 1
  local start_at, start_s, lease_s, hard_s = now, now_s, lease_now_s, hard_now_s
  if interval > 0 then
    start_at = math.max(now, math.ceil(tat + count * interval - tau))
    start_s, lease_s, hard_s = num_str(start_at), num_str(start_at + lease_ms),
      num_str(start_at + hard_ms)
  end
  rcall('HSET', job_key(id), 'status', 'active', 'epoch', num_str(epoch), 'attempts',
    num_str(attempt), 'claims', num_str(tonumber(f[4] or '0') + 1), 'owner', worker,
    'started_at', start_s, 'lease', lease_s, 'hard_deadline', hard_s, 'settled', '')
  f[1] = 'active'
  leases[#leases + 1] = lease_s
  leases[#leases + 1] = id
  local args, kwargs = unpack_args(blobs[id])
  local o = 4 + count * 9 -- out's length (9 values a job; no # per value)
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = id, epoch, attempt, f[5], args
  out[o + 6], out[o + 7], out[o + 8], out[o + 9] = kwargs, f[6], f[7] or '', start_at
  count = count + 1
end
-- Highest priority first; within a level, by ready time (FIFO).
if promoted then
  levels = ready_levels(KEYS[2])
  local rounds = 0
  for _, level in ipairs(levels) do
    while count < want and rounds < 10 do
      rounds = rounds + 1
      local ids = rcall('ZRANGEBYSCORE', level, '-inf', now_s, 'LIMIT', 0, want - count)
      if #ids == 0 then break end
      rcall('ZREM', level, unpack(ids))
      for _, id in ipairs(ids) do claim_one(id) end
    end
  end
else
  for _, level in ipairs(levels) do
    local taken = {}
    for _, id in ipairs(seen[level]) do
      if count >= want then break end
      taken[#taken + 1] = id
      claim_one(id)
    end
    call_chunked('ZREM', level, taken)
  end
end
call_chunked('ZADD', KEYS[4], leases)
out[4] = count
if interval > 0 and count > 0 then
  rcall('HSET', KEYS[6], 'tat', string.format('%.3f', tat + count * interval))
end

-- Earliest future work, so an idle worker knows how long it may block. An emptied priority
-- level leaves the list of levels.
local next_due = -1
local ready_left = false
for _, level in ipairs(levels) do
  local head = rcall('ZRANGE', level, 0, 0, 'WITHSCORES')
  if #head > 0 then
    local at = tonumber(head[2])
    if next_due == -1 or at < next_due then next_due = at end
    if at <= now then ready_left = true end
  elseif level ~= KEYS[2] then
    rcall('ZREM', KEYS[2] .. ':prio', string.sub(level, #KEYS[2] + 4))
  end
end
if #due > 0 then rhead = rcall('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES') end -- promoted ones left
if #rhead > 0 and (next_due == -1 or tonumber(rhead[2]) < next_due) then
  next_due = tonumber(rhead[2])
end
if not ready_left then
  held = ''
elseif held == '' or count < want then
  -- More ready jobs than this worker took: wake another worker.
  held = ''
  wake(KEYS[5])
elseif held == 'rate' then
  -- The next start is due at tat - tau: claim again lookahead before it. The worker sleeps
  -- exactly so long (no token: a token would only wake the others to be told the same).
  next_due = math.floor(tat + count * interval - tau - lookahead)
else
  -- At the cap: whoever frees a slot (complete, fail) wakes one waiter.
  rcall('HSET', KEYS[6], 'cap_wait', '1')
  next_due = -1
end
out[3] = next_due
out[#out + 1] = held
return out
