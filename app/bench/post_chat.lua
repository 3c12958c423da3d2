-- wrk script: POST one chat completion per request.
-- Environment: BENCH_BODY (JSON body), BENCH_KEY (bearer key), BENCH_OUT (file for records).
-- Every answer's status, X-Request-ID and X-DB-Overhead is kept, so the harness can look
-- each exchange up in the database afterwards and compute the overhead percentiles itself.
-- The direct runs use this script too, so wrk does the same per-response work for both.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  records = {}
end

-- Header names arrive as the server spelled them: uvicorn lowercases, others may not.
local function header(headers, lower, canonical)
  return headers[lower] or headers[canonical]
end

function response(status, headers, body)
  local id = header(headers, "x-request-id", "X-Request-ID") or ""
  local overhead = header(headers, "x-db-overhead", "X-DB-Overhead") or ""
  records[#records + 1] = status .. "\t" .. id .. "\t" .. overhead
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  for _, thread in ipairs(threads) do
    for _, record in ipairs(thread:get("records")) do
      out:write(record, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
