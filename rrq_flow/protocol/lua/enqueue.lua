--[[
  Enqueue a batch of jobs into one queue.

  KEYS[1] meta HASH            KEYS[2] queue ZSET (score = ready time, ms)
  KEYS[3] wake LIST            KEYS[4] queue stats HASH
  ARGV[1] key prefix "rrq:{<pipeline>}:"     ARGV[2] queue name
  ARGV[3] max attempts                       ARGV[4] generation id to record if the pipeline is new
  ARGV[5] number of jobs N, then N groups of 8:
          id, args JSON, kwargs JSON, when ("" now | "+<ms>" delay | "=<ms>" absolute),
          unique key ("" none), parent id ("" none), priority (integer; "0" default),
          run id ("" none; the job and its descendants are counted in that run, fragments/runs.lua)

  Returns: flat array id, verdict per job; verdict 'new' | 'exists' | 'unique' (the id is then
  the unfinished job holding the unique key).
  Checks before the first write: argument count and numbers, the type of every key it touches
  (meta, the queue's keys and priority level, each job record, unique key and its holder's
  record); an error reply means nothing was written.
  Invariant: a job record and its queue entry are created together; an id is never enqueued twice.
  Retry-safe: the client picks job ids before sending, so a repeat after a lost reply answers
  'exists' for each job and changes nothing.
]]
-- #include common
-- #include runs
-- #include add_job

local queue, max_attempts = ARGV[2], ARGV[3]
local n = check_num(5, 'number of jobs')
if #ARGV ~= 5 + n * 8 then refuse('expected ' .. (5 + n * 8) .. ' arguments, got ' .. #ARGV) end
check_type(KEYS[1], 'hash')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'list')
check_type(KEYS[4], 'hash')
for i = 0, n - 1 do
  local b = 6 + i * 8
  check_add(queue, ARGV[b], ARGV[b + 3], ARGV[b + 4], max_attempts, ARGV[b + 6])
end

rcall('HSETNX', KEYS[1], 'generation', ARGV[4])
local now = now_ms()
local out = {}
local any_ready = false
local sink = {} -- the queue entries and count, written at once below
for i = 0, n - 1 do
  local b = 6 + i * 8
  local id, verdict = add_job(queue, ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3],
    ARGV[b + 4], ARGV[b + 5], max_attempts, now, ARGV[b + 6], ARGV[b + 7], sink)
  out[#out + 1] = id
  out[#out + 1] = verdict
  if verdict == 'new' then any_ready = true end
end
flush_added(queue, sink)
-- Deferred jobs wake an idle worker too, so it can shorten its wait to their due time.
if any_ready then wake(KEYS[3]) end
return out
