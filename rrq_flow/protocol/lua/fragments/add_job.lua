--[[
  add_job: create one job record and put it in its queue; shared by enqueue and by the creation of
  children (complete, expand). Needs common and runs (a job of a run is counted in it).

  check_add_job (before the script's first write) checks the keys add_job will read or write, the
  `when` field and the priority; add_job then cannot fail half-way. (Short arguments go into the
  record; longer ones into args:<id>, which is only ever SET here, which no type can make
  fail.) check_add also checks the queue's dead set, for a join that may be dead-lettered as it
  is made (fragments/groups.lua).

  The record is sparse: fields that are empty or 0 (unique_key, parent, run, priority, stalls,
  claims) are left out and read as such, so that it stays small and in Redis' listpack encoding.

  Returns (id, verdict): 'new'; 'exists' when a job with this id is known (the same id twice never
  makes a second job, so a retried enqueue is harmless); 'unique' with the id of the unfinished
  job that holds the unique key. Third return: true when the job is ready now. ``blob``: the
  arguments as stored in args:<id> (pack_args(args JSON, kwargs JSON)). ``prio``: the
  job's priority as a string ('' or '0': the default level). ``sink`` (optional, enqueue.lua):
  a table that collects the queue entries and the count instead of writing them one by one; the
  caller writes them with flush_added(sink) before it returns. ``jk`` (optional): the record's
  key, job_key(id), when the caller has made it already.
]]
local TERMINAL = { done = true, dead = true, failed = true, cancelled = true }

-- queue -> {priority -> true}: the keys a new job of that queue and priority goes into, checked
-- (once per script: a batch of a thousand jobs of one queue checks them once).
local queues_checked = {}

-- check_add_job checks what add_job itself touches; check_add also the queue's dead set, for a
-- caller whose job may be dead-lettered in the same step (a join: fragments/groups.lua).
local function check_add_job(queue, id, when, ukey, max_attempts, prio)
  if id == '' then refuse('empty job id') end
  check_type(job_key(id), 'hash')
  if ukey ~= '' then
    local uk = unique_key(ukey)
    check_type(uk, 'string')
    local holder = rcall('GET', uk)
    if holder then check_type(job_key(holder), 'hash') end
  end
  if when ~= '' then
    local kind, ms = string.sub(when, 1, 1), tonumber(string.sub(when, 2))
    if (kind ~= '+' and kind ~= '=') or not ms then refuse('bad when field ' .. when) end
  end
  if not tonumber(max_attempts) then refuse('max attempts is not a number: ' .. max_attempts) end
  local by_prio = queues_checked[queue]
  if not by_prio then
    by_prio = {}
    queues_checked[queue] = by_prio
  end
  local pk = prio or ''
  if not by_prio[pk] then
    check_queue_new(queue)
    check_ready(queue_key(queue), prio)
    by_prio[pk] = true
  end
end

local function check_add(queue, id, when, ukey, max_attempts, prio)
  check_add_job(queue, id, when, ukey, max_attempts, prio)
  check_type(dead_key(queue), 'zset')
end

-- Whether the job record `jk` exists: known from check_add's type check (add_job marks each
-- record it creates, so an id twice in one call is one job), or asked.
local function job_exists(jk)
  local t = checked[jk]
  if t == nil then return rcall('EXISTS', jk) == 1 end
  return t ~= 'none'
end

-- queue -> its key (made once per call, not once per job)
local queue_keys = {}
-- add_job's optional record fields (the first `last` entries count)
local OPTIONAL = {}

local function add_job(queue, id, blob, when, ukey, parent, max_attempts, now, prio, run, sink,
    jk)
  jk = jk or job_key(id)
  if job_exists(jk) then return id, 'exists', false end
  local uk
  if ukey ~= '' then
    uk = unique_key(ukey)
    local holder = rcall('GET', uk)
    if holder then
      local holder_status = rcall('HGET', job_key(holder), 'status')
      if holder_status and not TERMINAL[holder_status] then return holder, 'unique', false end
    end
  end
  local ready_at = now
  local status = 'queued'
  if when ~= '' then
    local kind, ms = string.sub(when, 1, 1), tonumber(string.sub(when, 2))
    if kind == '+' then ready_at = now + ms else ready_at = ms end
    if ready_at > now then status = 'scheduled' end
  end
  local ready_s = num_str(ready_at) -- strings, not numbers (see num_str)
  -- The optional fields go into a table kept from job to job: no table is made per job.
  local opt, last = OPTIONAL, 0
  if ukey ~= '' then
    opt[1], opt[2], last = 'unique_key', ukey, 2
  end
  if parent ~= '' then
    opt[last + 1], opt[last + 2], last = 'parent', parent, last + 2
  end
  if run and run ~= '' then
    opt[last + 1], opt[last + 2], last = 'run', run, last + 2
  end
  local qk = queue_keys[queue]
  if not qk then
    qk = queue_key(queue)
    queue_keys[queue] = qk
  end
  local level = ready_key_for(qk, prio)
  if level ~= qk then
    opt[last + 1], opt[last + 2], last = 'priority', prio, last + 2
  end
  if #blob <= LONG_VALUE then
    opt[last + 1], opt[last + 2], last = 'packed_args', blob, last + 2
  else
    rcall('SET', args_key(id), blob)
  end
  rcall('HSET', jk, 'queue', queue, 'status', status, 'attempts', '0', 'max_attempts',
    max_attempts, 'epoch', '0', 'enqueued_at', num_str(now), 'ready_at', ready_s,
    unpack(opt, 1, last))
  checked[jk] = 'hash'
  if uk then rcall('SET', uk, id) end
  if sink and level == qk then
    sink[#sink + 1] = ready_s
    sink[#sink + 1] = id
  else
    add_ready(qk, prio, ready_s, id)
    if sink then sink.count = (sink.count or 0) + 1 end
  end
  if not sink then rcall('HINCRBY', stats_key(queue), 'enqueued', 1) end
  run_job_added(run, queue, id, now)
  return id, 'new', ready_at <= now
end

-- Write what add_job collected in `sink` for queue `queue`: the entries of its priority-0 level
-- (one ZADD) and the count of new jobs.
local function flush_added(queue, sink)
  local n = (sink.count or 0) + #sink / 2
  call_chunked('ZADD', queue_key(queue), sink)
  if n > 0 then rcall('HINCRBY', stats_key(queue), 'enqueued', n) end
end
