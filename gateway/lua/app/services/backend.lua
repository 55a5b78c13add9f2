-- The upstream server block: slow on request, never blocking its worker.
local cjson = require("cjson.safe")

local M = {}

function M.delay()
    local ms = tonumber(ngx.var.arg_ms) or 50
    ngx.sleep(ms / 1000)
    ngx.say(cjson.encode({ slept_ms = ms }))
end

function M.product()
    local id = tonumber(string.match(ngx.var.uri, "(%d+)$"))
    if not id then
        return ngx.exit(404)
    end
    ngx.sleep(0.005)
    ngx.say(cjson.encode({ id = id, name = "product-" .. id, price = id * 3 % 100 + 0.99 }))
end

return M
