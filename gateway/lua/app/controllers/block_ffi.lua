-- Planted problem: a thin wrapper around a blocking FFI call, the shape
-- lua-resty-core and most OpenResty libraries are built of. Unlike
-- block_sleep_work, the wrapper has no check of its own: JIT-compiled, it is
-- inlined into the handler's trace with no guard (so no snapshot) inside it,
-- and only the trace's code says that the call to usleep is the wrapper's.
-- An off-CPU profiler should put the blocked time under ffi_nap, with usleep
-- above it, whether the handler runs interpreted or compiled.
local ffi = require("ffi")
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

-- pcall: another module may already have declared usleep in the shared FFI
-- namespace, and redeclaring raises.
pcall(ffi.cdef, "int usleep(unsigned int usec);")

local C = ffi.C

local M = {}

local function ffi_nap(us)
    C.usleep(us)
end

function M.handle()
    local ms = args.int("ms", config.planted.block_sleep_ms, 0, 1000)
    ffi_nap(ms * 1000)
    response.json(200, { route = "/block/ffi", ms = ms })
end

return M
