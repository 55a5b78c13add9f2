-- The upstream service, served by a second server block of the same nginx.
-- Latency is chosen per request with ?delay_ms=; ngx.sleep yields, so slow
-- responses do not hold up the worker.
local args = require("app.utils.args")
local response = require("app.utils.response")

local ngx = ngx

local M = {}

local MAX_PRODUCT_ID = 100000

local function delay()
    local ms = args.int("delay_ms", 0, 0, 60000)
    if ms > 0 then
        ngx.sleep(ms / 1000)
    end
    return ms
end

function M.product()
    local ms = delay()
    local id = tonumber(ngx.var.product_id)
    if id < 1 or id > MAX_PRODUCT_ID then
        return response.json(404, { error = "no such product" })
    end
    response.json(200, {
        id = id,
        name = "Product " .. id,
        price = (id * 37 % 10000) / 100,
        stock = id * 13 % 250,
        loaded_after_ms = ms,
    })
end

function M.slow()
    local ms = delay()
    response.json(200, { delayed_ms = ms, request_id = ngx.var.http_x_request_id })
end

function M.echo()
    local ms = delay()
    response.json(200, {
        method = ngx.req.get_method(),
        uri = ngx.var.request_uri,
        delayed_ms = ms,
        request_id = ngx.var.http_x_request_id,
    })
end

return M
