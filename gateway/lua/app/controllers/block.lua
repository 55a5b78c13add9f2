-- Planted problem: a blocking syscall inside the event loop. usleep stops the
-- whole worker, so every other connection on it waits too. An off-CPU profiler
-- should put the blocked time under block_sleep_work, and an event-loop
-- profiler should see one long iteration per request.
--
-- The checks before and after the call are what real code does around a
-- syscall, and they matter to profilers: JIT-compiled, this function is
-- inlined into its caller's trace and has no stack frame; LuaJIT records
-- which inlined functions are live only at guards (snapshots), so a bare
-- call with no check around it would be charged to the caller.
local ffi = require("ffi")
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

-- pcall: another module may already have declared usleep in the shared FFI
-- namespace, and redeclaring raises.
pcall(ffi.cdef, "int usleep(unsigned int usec);")

local C = ffi.C

local M = {}

function M.block_sleep_work(ms)
    local us = ms * 1000
    if us <= 0 then
        return 0
    end
    if C.usleep(us) ~= 0 then
        error("usleep failed")
    end
    return ms
end

function M.handle()
    local ms = args.int("ms", config.planted.block_sleep_ms, 0, 1000)
    local slept = M.block_sleep_work(ms)
    response.json(200, { route = "/block/sleep", ms = slept })
end

return M
