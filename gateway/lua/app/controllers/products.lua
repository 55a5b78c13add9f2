local product = require("app.services.product")
local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.show()
    local id = tonumber(ngx.var.product_id)
    local item, layer = product.get(id)
    if not item then
        if layer == "not found" then
            return response.json(404, { error = "product not found", id = id })
        end
        ngx.log(ngx.ERR, "product ", id, ": ", layer)
        return response.json(503, { error = "product service unavailable" })
    end
    ngx.header["X-Cache"] = layer
    response.json(200, item)
end

return M
