-- wrk script: every request POSTs to a different id (bench/confirm_api.py).
--   wrk ... -s bench/wrk_unique_ids.lua URL -- IDS_FILE PATH_TEMPLATE THREADS
-- Thread k sends ids k+1, k+1+THREADS, ...; once its share is spent it sends the nil
-- UUID, which the confirm endpoint answers 404: exhaustion shows up as errors, never
-- as repeats (the reference routes take any token: for them it changes nothing).
-- done() prints one "WRKJSON {...}" line for the Python side to parse.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  ids = {}
  for line in io.lines(args[1]) do
    ids[#ids + 1] = line
  end
  template = args[2]
  stride = tonumber(args[3])
  token = args[4]
  index = tid + 1
  exhausted = 0
end

function request()
  local id = ids[index]
  if id == nil then
    exhausted = exhausted + 1
    id = "00000000-0000-0000-0000-000000000000"
  end
  index = index + stride
  return wrk.format("POST", string.format(template, id),
                    {["Content-Type"] = "application/json",
                     ["Authorization"] = "Bearer " .. token}, "{}")
end

function done(summary, latency, requests)
  local spent = 0
  for _, thread in ipairs(threads) do
    spent = spent + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "exhausted": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, spent))
end
