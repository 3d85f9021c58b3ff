--[[
  Enqueue a batch of jobs into one queue.

  KEYS[1] meta HASH            KEYS[2] queue ZSET (score = ready time, ms)
  KEYS[3] wake LIST            KEYS[4] queue stats HASH
  ARGV[1] key prefix "rrq:{<pipeline>}:"     ARGV[2] queue name
  ARGV[3] max attempts                       ARGV[4] generation id to record if the pipeline is new
  ARGV[5] number of jobs N, then N groups of 3:
          id,
          arguments as stored in args:<id>: "<bytes of args JSON>:<args JSON><kwargs JSON>",
          options: "" (none: ready now, no unique key, parent, priority or run) or a JSON array
            [when, unique key, parent id, priority, run id], each a string, "" for none; when:
            "" now | "+<ms>" delay | "=<ms>" absolute; priority: an integer ("0" default); run:
            the job and its descendants are counted in that run (fragments/runs.lua)

  Returns: the jobs not created new, as flat triples: position (1-based), id, verdict --
  'exists' (the id is known) | 'unique' (the id is then the unfinished job holding the unique
  key); an empty array when every job is new.
  Checks before the first write: argument count and numbers, the type of every key it touches
  (meta, the queue's keys and priority level, each job record, unique key and its holder's
  record), where it can by the read it needs anyway (meta's generation, the wake list's length;
  a batch's records by one EXISTS when none is there yet); an error reply means nothing was
  written.
  Invariant: a job record and its queue entry are created together; an id is never enqueued twice.
  Retry-safe: the client picks job ids before sending, so a repeat after a lost reply answers
  'exists' for each job and changes nothing.
]]
-- #include common
-- #include runs
-- #include add_job

local queue, max_attempts = ARGV[2], ARGV[3]
local n = check_num(5, 'number of jobs')
if #ARGV ~= 5 + n * 3 then refuse('expected ' .. (5 + n * 3) .. ' arguments, got ' .. #ARGV) end
local generation = check_read('HGET', KEYS[1], 'generation')
check_type(KEYS[2], 'zset')
local wake_pending = check_len(KEYS[3]) > 0
check_type(KEYS[4], 'hash')
local jkeys = {} -- by position: the record keys
for i = 0, n - 1 do jkeys[i + 1] = job_key(ARGV[6 + i * 3]) end
local fresh = false -- no record of the batch exists yet
if n > 1 then
  -- Fresh ids, the usual case: one EXISTS per 1,000 answers for every record at once (none
  -- exists: none can be of a wrong type) instead of a TYPE each.
  local found = 0
  for i = 1, n, 1000 do
    found = found + rcall('EXISTS', unpack(jkeys, i, math.min(i + 999, n)))
  end
  if found == 0 then
    fresh = true
    for _, jk in ipairs(jkeys) do checked[jk] = 'none' end
  end
end
local EMPTY = { '', '', '', '', '' }
local opts = {} -- by position: the decoded options
local plain_checked = false -- a job without options was checked (queue, level, max attempts)
for i = 0, n - 1 do
  local b = 6 + i * 3
  local blob = ARGV[b + 1]
  local digits = string.match(blob, '^(%d+):')
  if not digits or #blob < #digits + 1 + tonumber(digits) then
    refuse('job ' .. ARGV[b] .. ': arguments not of the form <bytes>:<args><kwargs>')
  end
  local o = EMPTY
  if ARGV[b + 2] ~= '' then
    local ok, decoded = pcall(cjson.decode, ARGV[b + 2])
    if not ok or type(decoded) ~= 'table' or #decoded ~= 5 then
      refuse('job ' .. ARGV[b] .. ': options are not [when, unique, parent, priority, run]')
    end
    for k = 1, 5 do
      if type(decoded[k]) ~= 'string' then refuse('job ' .. ARGV[b] .. ': option ' .. k) end
    end
    o = decoded
  end
  opts[i] = o
  if o == EMPTY and fresh and plain_checked then
    -- The rest of check_add_job is the same for every such job: its record is known missing,
    -- and the queue, its default level and max attempts were checked with the first.
    if ARGV[b] == '' then refuse('empty job id') end
  else
    check_add_job(queue, ARGV[b], o[1], o[2], max_attempts, o[4])
    plain_checked = plain_checked or o == EMPTY
  end
end

if not generation then rcall('HSET', KEYS[1], 'generation', ARGV[4]) end
local now = now_ms()
local out = {}
local any_ready = false
local sink = {} -- the queue entries and count, written at once below
for i = 0, n - 1 do
  local b = 6 + i * 3
  local o = opts[i]
  local id, verdict = add_job(queue, ARGV[b], ARGV[b + 1], o[1], o[2], o[3], max_attempts, now,
    o[4], o[5], sink, jkeys[i + 1])
  if verdict == 'new' then
    any_ready = true
  else
    out[#out + 1] = i + 1
    out[#out + 1] = id
    out[#out + 1] = verdict
  end
end
flush_added(queue, sink)
-- Deferred jobs wake an idle worker too, so it can shorten its wait to their due time.
if any_ready and not wake_pending then rcall('RPUSH', KEYS[3], '1') end
return out
