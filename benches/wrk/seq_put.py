"""Sequential PUTs over one keep-alive HTTP connection, with raw per-request latency percentiles.

wrk corrects its latency histogram for coordinated omission: after a run it adds samples for the
requests that a stalled connection "should" have sent, so at one connection a few 10-20 ms stalls
become its p95-p99. This client records each request's own latency and nothing else, to show what
a single sequential client sees.

    python3 benches/wrk/seq_put.py 127.0.0.1 8001 10          # memstore: PUT /store/{key}/{value}
    python3 benches/wrk/seq_put.py 127.0.0.1 23791 10 etcd    # etcd's JSON gateway: POST /v3/kv/put
"""

import base64
import http.client
import json
import random
import sys
import time


def main():
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    etcd = len(sys.argv) > 4 and sys.argv[4] == "etcd"
    conn = http.client.HTTPConnection(host, port)
    latencies = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        i += 1
        key = "k%d-%d" % (i, random.randint(0, 10**9))
        start = time.perf_counter()
        if etcd:
            body = json.dumps({
                "key": base64.b64encode(key.encode()).decode(),
                "value": base64.b64encode(b"value-%d" % i).decode(),
            })
            conn.request("POST", "/v3/kv/put", body=body)
        else:
            conn.request("PUT", "/store/%s/value-%d" % (key, i))
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            sys.exit("request %d answered %d" % (i, response.status))
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    n = len(latencies)

    def ms(p):
        return latencies[min(n - 1, int(n * p / 100))] * 1000

    print("n=%d req/s=%.0f mean=%.3fms %s max=%.1fms" % (
        n, n / seconds, sum(latencies) / n * 1000,
        " ".join("p%s=%.2fms" % (p, ms(p)) for p in (50, 90, 95, 99, 99.9)),
        latencies[-1] * 1000))


if __name__ == "__main__":
    main()
