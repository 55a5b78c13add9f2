-- Planted event-loop blocking: usleep(3) through the FFI stops the whole worker,
-- every other request on it waits (ngx.sleep would yield instead).
local ffi = require("ffi")

ffi.cdef [[ int usleep(unsigned int usec); ]]

local M = {}

function M.block_sleep_work(ms)
    ffi.C.usleep(ms * 1000)
    return ms
end

function M.sleep()
    local ms = math.max(0, math.min(tonumber(ngx.var.arg_ms) or 20, 1000))
    ngx.say("blocked ", M.block_sleep_work(ms), " ms")
end

return M
