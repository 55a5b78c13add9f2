-- Request counters and latency per route and status, kept in a shared dict so
-- every worker's requests count; /metrics prints them in Prometheus text format.
local M = {}
local dict = ngx.shared.gw_metrics

-- A bounded set of route labels, whatever URIs clients send.
local function route_of(uri)
    if string.sub(uri, 1, 14) == "/api/products/" then
        return "/api/products/:id"
    elseif string.sub(uri, 1, 12) == "/api/secure/" then
        return "/api/secure/*"
    elseif #uri > 40 then
        return "other"
    end
    return uri
end

function M.record()
    local route = route_of(ngx.var.uri)
    local status = ngx.status
    local seconds = ngx.now() - ngx.req.start_time()
    dict:incr("count|" .. route .. "|" .. status, 1, 0)
    dict:incr("sum|" .. route, seconds, 0)
    dict:incr("n|" .. route, 1, 0)
end

function M.get()
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    local out = {
        "# HELP gateway_requests_total Requests by route and status.",
        "# TYPE gateway_requests_total counter",
    }
    local sums = {}
    for _, key in ipairs(dict:get_keys(0)) do
        local kind, route, status = string.match(key, "^(%a+)|([^|]+)|?(%d*)$")
        if kind == "count" then
            out[#out + 1] = string.format('gateway_requests_total{route="%s",status="%s"} %d', route, status, dict:get(key))
        elseif kind == "sum" then
            sums[#sums + 1] = route
        end
    end
    out[#out + 1] = "# HELP gateway_request_seconds Request latency by route."
    out[#out + 1] = "# TYPE gateway_request_seconds summary"
    for _, route in ipairs(sums) do
        out[#out + 1] = string.format('gateway_request_seconds_sum{route="%s"} %.6f', route, dict:get("sum|" .. route) or 0)
        out[#out + 1] = string.format('gateway_request_seconds_count{route="%s"} %d', route, dict:get("n|" .. route) or 0)
    end
    ngx.say(table.concat(out, "\n"))
end

return M
