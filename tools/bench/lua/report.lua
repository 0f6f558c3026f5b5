-- Shared by the benchmark scripts: count answers by HTTP status in each wrk thread, and print one
-- JSON line ("BENCH_JSON {...}") when the run is done, which bench/common.py reads.

bench_threads = {}
statuses = {}

function bench_setup(thread)
   table.insert(bench_threads, thread)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

local function json_counts(counts)
   local parts = {}
   for status, n in pairs(counts) do
      table.insert(parts, string.format('"%d":%d', status, n))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local totals = {}
   for _, thread in ipairs(bench_threads) do
      local counts = thread:get("statuses") or {}
      for status, n in pairs(counts) do
         totals[status] = (totals[status] or 0) + n
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":%s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout, json_counts(totals)))
end
