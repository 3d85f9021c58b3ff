--[[
  add_job: create one job record and put it in its queue; shared by enqueue and by the creation of
  children (complete, expand). Needs common and runs (a job of a run is counted in it).

  check_add (before the script's first write) checks the keys add_job will read or write, the
  `when` field and the priority; add_job then cannot fail half-way.

  Returns (id, verdict): 'new'; 'exists' when a job with this id is known (the same id twice never
  makes a second job, so a retried enqueue is harmless); 'unique' with the id of the unfinished
  job that holds the unique key. Third return: true when the job is ready now. ``prio``: the
  job's priority as a string ('' or '0': the default level).
]]
local TERMINAL = { done = true, dead = true, failed = true, cancelled = true }

local function check_add(queue, id, when, ukey, max_attempts, prio)
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
  check_queue(queue)
  check_ready(queue_key(queue), prio)
end

local function add_job(queue, id, args, kwargs, when, ukey, parent, max_attempts, now, prio, run)
  local jk = job_key(id)
  if rcall('EXISTS', jk) == 1 then return id, 'exists', false end
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
  rcall('HSET', jk, 'id', id, 'queue', queue, 'args', args, 'kwargs', kwargs, 'status', status,
    'attempts', 0, 'claims', 0, 'max_attempts', max_attempts, 'epoch', 0, 'stalls', 0,
    'enqueued_at', now, 'ready_at', ready_at, 'unique_key', ukey, 'parent', parent,
    'run', run or '')
  if prio ~= nil and prio ~= '' and prio ~= '0' then rcall('HSET', jk, 'priority', prio) end
  if uk then rcall('SET', uk, id) end
  add_ready(queue_key(queue), prio, ready_at, id)
  rcall('HINCRBY', stats_key(queue), 'enqueued', 1)
  run_job_added(run, queue, id, now)
  return id, 'new', ready_at <= now
end
