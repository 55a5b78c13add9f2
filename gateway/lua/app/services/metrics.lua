-- Request counters and latency per route, kept in a shared dict so /metrics
-- sees every worker. Routes are nginx `$route` labels, never raw URIs, so the
-- number of series stays bounded.
local ngx = ngx
local concat = table.concat
local dict = ngx.shared.metrics

local M = {}

-- Log phase: the response is gone, so this costs the client nothing.
function M.log()
    if ngx.is_subrequest then
        return
    end
    local route = ngx.var.route
    if route == nil or route == "" then
        route = "unmatched"
    end
    -- $request_time uses nginx's cached clock, which a CPU-bound handler
    -- never lets advance: it would report 0 for a 20 ms request.
    ngx.update_time()
    local latency = ngx.now() - ngx.req.start_time()
    dict:incr("req|" .. route .. "|" .. ngx.status, 1, 0)
    dict:incr("sum|" .. route, latency, 0)
    dict:incr("cnt|" .. route, 1, 0)
end

local HEADERS = {
    req = {
        "# HELP gateway_requests_total Requests by route and status.",
        "# TYPE gateway_requests_total counter",
    },
    sum = {
        "# HELP gateway_request_duration_seconds Request latency by route.",
        "# TYPE gateway_request_duration_seconds summary",
    },
}

local FORMATS = {
    req = 'gateway_requests_total{route="%s",status="%s"} %d',
    sum = 'gateway_request_duration_seconds_sum{route="%s"} %.6f',
    cnt = 'gateway_request_duration_seconds_count{route="%s"} %d',
}

function M.render()
    local series = { req = {}, sum = {}, cnt = {} }
    local keys = dict:get_keys(0)
    table.sort(keys)
    for _, key in ipairs(keys) do
        local kind, route, status = key:match("^(%a+)|([^|]+)|?(%d*)$")
        local value = dict:get(key)
        local lines = series[kind]
        if lines and value then
            if kind == "req" then
                lines[#lines + 1] = FORMATS.req:format(route, status, value)
            else
                lines[#lines + 1] = FORMATS[kind]:format(route, value)
            end
        end
    end
    local out = {}
    for _, kind in ipairs({ "req", "sum" }) do
        for _, line in ipairs(HEADERS[kind]) do
            out[#out + 1] = line
        end
        for _, line in ipairs(series[kind]) do
            out[#out + 1] = line
        end
    end
    for _, line in ipairs(series.cnt) do
        out[#out + 1] = line
    end
    out[#out + 1] = ""
    return concat(out, "\n")
end

return M
