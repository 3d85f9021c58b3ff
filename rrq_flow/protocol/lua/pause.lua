--[[
  Pause or resume one queue (operator's `rrq-flow pause/resume`, a handler's pause_queue).

  KEYS[1] flow HASH (paused_until: ms, -1 = until resumed)    KEYS[2] wake LIST
  ARGV[1] key prefix
  ARGV[2] mode: 'pause' (paused_until = now + ms, or -1 for ms = -1: no end),
                'extend' (a handler's back-off: paused_until = max(current, now + ms); a pause
                with no end stays so), 'resume' (the pause ends now)
  ARGV[3] ms (pause, extend)

  Returns: {now, paused_until} after the change (0: not paused).
  Invariant: running jobs are untouched; claim starts nothing while now < paused_until (or it
  is -1). Resume leaves one wake token so idle workers claim at once; a pause that runs out
  needs none (a waiting worker blocks only until paused_until).
  Checks before the first write: the mode, the ms and both keys' types; an error reply means
  nothing was written.
  Retry-safe: 'pause' and 'resume' set the same state again; 'extend' only ever lengthens.
]]
-- #include common

local mode, amount = ARGV[2], tonumber(ARGV[3] or '0')
if mode ~= 'pause' and mode ~= 'extend' and mode ~= 'resume' then
  return redis.error_reply('ERR pause mode must be pause, extend or resume')
end
if mode ~= 'resume' and (amount == nil or (amount < 0 and amount ~= -1)) then
  return redis.error_reply('ERR pause needs ms >= 0 or -1')
end
check_type(KEYS[1], 'hash')
check_type(KEYS[2], 'list')
local now = now_ms()
local current = tonumber(rcall('HGET', KEYS[1], 'paused_until') or '0')
if current > 0 and current <= now then current = 0 end
local target
if mode == 'resume' then
  target = 0
elseif amount == -1 then
  target = -1
elseif mode == 'pause' then
  target = now + amount
elseif current == -1 then
  target = -1
else
  target = math.max(current, now + amount)
end
if target == 0 then
  if rcall('HDEL', KEYS[1], 'paused_until') == 1 then wake(KEYS[2]) end
else
  rcall('HSET', KEYS[1], 'paused_until', target)
end
return { now, target }
