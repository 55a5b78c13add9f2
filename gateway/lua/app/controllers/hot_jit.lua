-- Planted problem: CPU-heavy Lua that the JIT compiles into a trace. A profiler
-- should show hot_jit_work as the widest Lua frame, sampled inside trace code.
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

local M = {}

local SIZE = 4096
local samples = {}
for i = 1, SIZE do
    samples[i] = (i * 7919) % 1000 / 10
end

function M.hot_jit_work(n)
    -- Only numbers, array loads and arithmetic: all of it is compilable.
    local acc, x = 0, 1
    for _ = 1, n do
        x = (x * 1103515245 + 12345) % 2147483648
        local v = samples[x % SIZE + 1]
        acc = acc + v * v - acc * 1e-7
    end
    return acc
end

-- Kept apart from its twin on purpose: LuaJIT names a frame from its call site,
-- so the planted function must be called as M.hot_jit_work right here.
function M.handle()
    local scale = args.num("n", 1, 0.001, 1000)
    local iterations = math.max(1, math.floor(scale * config.planted.hot_jit_iterations))
    local acc = M.hot_jit_work(iterations)
    response.json(200, { route = "/hot/jit", n = scale, iterations = iterations, result = acc })
end

return M
