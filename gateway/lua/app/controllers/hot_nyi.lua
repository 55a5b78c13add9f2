-- Planted problem: CPU-heavy Lua that the JIT cannot compile, so it runs in
-- the interpreter. A profiler should show hot_nyi_work as the widest Lua frame
-- with interpreted (not trace) samples.
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

local byte = string.byte
local concat = table.concat
local format = string.format
local gsub = string.gsub
local pairs = pairs

local M = {}

local FIELDS = {
    tenant = "acme corp", order = "100042/7", region = "eu-west-1", plan = "enterprise+",
    user = "alice@example.com", agent = "curl/8.0 (x86_64)", next = "/v1/orders?page=2&sort=desc",
    q = "café & crème brûlée", filter = "price>=10 && price<=99", sig = "a/b+c=d",
}

-- Builds a URL-encoded query string from FIELDS, n times.
function M.hot_nyi_work(n)
    local total = 0
    for i = 1, n do
        local parts = {}
        for k, v in pairs(FIELDS) do
            -- A fresh closure per field: creating closures (FNEW) is NYI in
            -- LuaJIT 2.1, so every trace attempt through here aborts and the
            -- loops get blacklisted; string.gsub itself is never compiled.
            local escaped = gsub(v, "[^%w%-_%.~]", function(c)
                return format("%%%02X", byte(c))
            end)
            parts[#parts + 1] = k .. "=" .. escaped
        end
        total = total + #concat(parts, "&") + i
    end
    return total
end

-- Kept apart from its twin on purpose: LuaJIT names a frame from its call site,
-- so the planted function must be called as M.hot_nyi_work right here.
function M.handle()
    local scale = args.num("n", 1, 0.001, 1000)
    local iterations = math.max(1, math.floor(scale * config.planted.hot_nyi_iterations))
    local total = M.hot_nyi_work(iterations)
    response.json(200, { route = "/hot/nyi", n = scale, iterations = iterations, result = total })
end

return M
