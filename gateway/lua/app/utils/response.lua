local json = require("app.utils.json")

local ngx = ngx

local M = {}

function M.json(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.print(json.encode(body))
    ngx.print("\n")
end

-- For middleware: answer and stop the request in the current phase.
-- The status is already on the wire, so exit with 200 (= "done"): exiting
-- with the error status again makes ngx_lua log an error.
function M.abort(status, body)
    M.json(status, body)
    return ngx.exit(ngx.HTTP_OK)
end

return M
