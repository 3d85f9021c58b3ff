--[[
  runs: batch-run accounting, done in the same script as each job's creation and end, so the
  counts can never disagree with the jobs. Needs common.

  run:<run>            HASH  started_at, updated_at, finished_at (set while every job has ended),
                             total, finished, enqueued:<queue>, <terminal state>:<queue>
  run:<run>:jobs:<q>   LIST  ids of the run's jobs in queue q, in creation order (`results` pages it)
  runs                 ZSET  run -> started ms; only the newest RUNS_KEPT entries are kept
  While any job of a run is unfinished its keys have no TTL; when the last one ends they expire
  after that job's result ttl (and lose it again if the run grows later).
]]
local RUNS_KEPT = 1000

local function run_key(run) return PREFIX .. 'run:' .. run end

-- Set (ttl_ms) or remove (nil) the expiry of a run's hash and of its per-queue job lists.
local function run_keys_ttl(rk, ttl_ms)
  for _, f in ipairs(rcall('HKEYS', rk)) do
    if string.sub(f, 1, 9) == 'enqueued:' then
      local lk = rk .. ':jobs:' .. string.sub(f, 10)
      if ttl_ms then rcall('PEXPIRE', lk, ttl_ms) else rcall('PERSIST', lk) end
    end
  end
  if ttl_ms then rcall('PEXPIRE', rk, ttl_ms) else rcall('PERSIST', rk) end
end

-- A job of `run` was created in `queue` (called by add_job for new jobs only).
local function run_job_added(run, queue, id, now)
  if run == nil or run == '' then return end
  local rk = run_key(run)
  if rcall('HSETNX', rk, 'started_at', now) == 1 then
    rcall('ZADD', PREFIX .. 'runs', now, run)
    rcall('ZREMRANGEBYRANK', PREFIX .. 'runs', 0, -(RUNS_KEPT + 1))
  end
  rcall('HINCRBY', rk, 'total', 1)
  rcall('HINCRBY', rk, 'enqueued:' .. queue, 1)
  rcall('HSET', rk, 'updated_at', now)
  rcall('RPUSH', rk .. ':jobs:' .. queue, id)
  -- A run that had finished grows again (same run id reused): it is unfinished, keep it.
  if rcall('HDEL', rk, 'finished_at') == 1 then run_keys_ttl(rk, nil) end
end

-- A job of `run` in `queue` reached the terminal `state`: count it; the run's last job starts
-- the expiry of the run's keys.
local function run_ended(run, queue, state, now, ttl_ms)
  if not run or run == '' then return end
  local rk = run_key(run)
  if rcall('EXISTS', rk) == 0 then return end
  rcall('HINCRBY', rk, state .. ':' .. queue, 1)
  local finished = rcall('HINCRBY', rk, 'finished', 1)
  rcall('HSET', rk, 'updated_at', now)
  if finished >= tonumber(rcall('HGET', rk, 'total') or '0') then
    rcall('HSET', rk, 'finished_at', now)
    run_keys_ttl(rk, ttl_ms)
  end
end

-- The same for the job whose record is jk.
local function run_job_ended(jk, state, now, ttl_ms)
  local f = rcall('HMGET', jk, 'run', 'queue')
  run_ended(f[1], f[2], state, now, ttl_ms)
end

-- A dead job of the run was requeued: it is unfinished again.
local function run_job_reopened(jk, now)
  local f = rcall('HMGET', jk, 'run', 'queue')
  local run, queue = f[1], f[2]
  if not run or run == '' then return end
  local rk = run_key(run)
  if rcall('EXISTS', rk) == 0 then return end
  rcall('HINCRBY', rk, 'dead:' .. queue, -1)
  rcall('HINCRBY', rk, 'finished', -1)
  rcall('HSET', rk, 'updated_at', now)
  if rcall('HDEL', rk, 'finished_at') == 1 then run_keys_ttl(rk, nil) end
end
