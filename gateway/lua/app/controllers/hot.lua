-- Planted CPU problems: the same kind of arithmetic, once in code the JIT cannot
-- compile (a closure created per iteration: FNEW is not yet implemented in the
-- JIT) and once in a plain numeric loop that compiles to traces.
local M = {}

local DEFAULT_N = 60000

function M.hot_nyi_work(n)
    local acc = 0
    for i = 1, n do
        local step = function(x) return x + i end
        acc = (acc * 31 + step(i) * 7 + i % 13) % 1000003
    end
    return acc
end

function M.hot_jit_work(n)
    local acc = 0
    for i = 1, n * 20 do
        acc = (acc * 31 + i * 7 + i % 13) % 1000003
    end
    return acc
end

local function n_param()
    local n = tonumber(ngx.var.arg_n) or 1
    return math.max(1, math.min(n, 1000)) * DEFAULT_N
end

function M.nyi()
    ngx.say(M.hot_nyi_work(n_param()))
end

function M.jit()
    ngx.say(M.hot_jit_work(n_param()))
end

return M
