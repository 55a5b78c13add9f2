-- Planted for the regression gate (`ljprobe gate`, `cargo xtask perf-gate`): a
-- quote is parsed, priced and rendered by three compiled loops whose shares of
-- the request are fixed by config.planted.quote. Starting the gateway with
-- GATEWAY_SLOWER=quote_price (`cargo xtask gateway up --slower quote_price`)
-- makes pricing do 20% more work: the regression a CI job has to catch, planted
-- by configuration so that the code profiled is the same in both runs.
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

local M = {}

local function work(stage)
    local n = config.planted.quote[stage]
    if config.slower == "quote_" .. stage then
        n = math.floor(n * config.slower_factor)
    end
    return n
end

function M.quote_parse(n)
    local h = 5381
    for i = 1, n do
        h = (h * 33 + i % 251) % 4294967296
    end
    return h
end

function M.quote_price(n)
    local p, q = 1, 0
    for i = 1, n do
        q = q + (p * 0.5 + i) % 97
        p = (p * 1103515245 + 12345) % 2147483648
    end
    return q
end

function M.quote_render(n)
    local a, b = 0, 1
    for i = 1, n do
        a, b = b, (a + b + i) % 1000003
    end
    return a
end

-- Each stage is called as M.<name> here, not as a tail call, so that LuaJIT's
-- debug info names it and the handler frame stays below it.
function M.handle()
    local scale = args.num("n", 1, 0.001, 1000)
    local function iterations(stage)
        return math.max(1, math.floor(scale * work(stage)))
    end
    local h = M.quote_parse(iterations("parse"))
    local p = M.quote_price(iterations("price"))
    local r = M.quote_render(iterations("render"))
    response.json(200, { route = "/api/quote", n = scale, parsed = h, price = p, rendered = r })
end

return M
