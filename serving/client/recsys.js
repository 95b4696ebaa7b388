// recsys browser client: asks the decision service for offers and reports what the page
// did with them. No dependencies, renders nothing: the page shows the offers its own way.
//
//   import { RecsysClient } from "/client/recsys.js";
//   const recsys = new RecsysClient({ publishableKey, customerToken });  // from your server
//   const decision = await recsys.decide({ customerId, touchpoint: "web_home", limit: 3 });
//   // ... show decision.offers ...
//   recsys.impression(decision, offerId);   // shown
//   recsys.click(decision, offerId);        // clicked
//   recsys.dismiss(decision, offerId);      // closed by the customer
//
// The publishable key is public (it is in the page); the customer token is short-lived and
// made by your server for the signed-in customer (docs/serving.md, "Browsers"). A browser
// may only ask for its token's customer and report impressions, clicks and dismissals;
// accepts, conversions and revenue come from your server with a secret key.

/** An error answer of the service: `status`, and `errors` naming each field. */
export class RecsysError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
    super(detail);
    this.name = "RecsysError";
    this.status = status;
    this.errors = body && Array.isArray(body.errors) ? body.errors : [];
    const retry = body && body.retryAfter;
    this.retryAfter = typeof retry === "number" ? retry : null;
  }
}

function eventId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") {
    return globalThis.crypto.randomUUID();
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export class RecsysClient {
  /**
   * @param {object} options
   * @param {string} options.publishableKey  an rk_pub_ key
   * @param {string} options.customerToken   the signed-in customer's token, from your server
   * @param {string} [options.baseUrl]       the service, default this page's origin
   * @param {typeof fetch} [options.fetch]   default the browser's fetch
   */
  constructor({ publishableKey, customerToken, baseUrl = "", fetch: fetchImpl } = {}) {
    if (typeof publishableKey !== "string" || !publishableKey.startsWith("rk_pub_")) {
      throw new TypeError("`publishableKey` must be a publishable key (rk_pub_...)");
    }
    this.publishableKey = publishableKey;
    this.setCustomerToken(customerToken);
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.fetch = fetchImpl || globalThis.fetch.bind(globalThis);
  }

  /** Use a new token (the old one expired, or another customer signed in). */
  setCustomerToken(customerToken) {
    if (typeof customerToken !== "string" || customerToken === "") {
      throw new TypeError("`customerToken` must be the customer token from your server");
    }
    this.customerToken = customerToken;
  }

  async request(path, body, { keepalive = false } = {}) {
    const response = await this.fetch(`${this.baseUrl}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-api-key": this.publishableKey,
        "x-customer-token": this.customerToken,
      },
      body: JSON.stringify(body),
      keepalive,
    });
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch (_) {
      parsed = { detail: text };
    }
    if (!response.ok) {
      const retry = Number(response.headers.get("retry-after"));
      throw new RecsysError(response.status, {
        ...(parsed || {}),
        retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null,
      });
    }
    return parsed;
  }

  /**
   * Offers for the token's customer at one touchpoint, best first.
   * @returns {Promise<{decision_id: string, customer_id: string, touchpoint: string,
   *   ts: string, offers: {offer_id: string, name: string, rank: number}[]}>}
   */
  async decide({ customerId, touchpoint, context, limit, excludeOffers, unitId }) {
    const body = { customer_id: customerId, touchpoint };
    if (context !== undefined) body.context = context;
    if (limit !== undefined) body.limit = limit;
    if (excludeOffers !== undefined) body.exclude_offers = excludeOffers;
    if (unitId !== undefined) body.unit_id = unitId;
    return this.request("/v1/decisions", body);
  }

  /** Report that an offer of `decision` was shown. */
  impression(decision, offerId) {
    return this.report(decision, offerId, "impression");
  }

  /** Report that the customer clicked an offer of `decision`. */
  click(decision, offerId) {
    return this.report(decision, offerId, "click");
  }

  /** Report that the customer closed an offer of `decision`. */
  dismiss(decision, offerId) {
    return this.report(decision, offerId, "dismiss");
  }

  /**
   * Send one event (kept alive, so a click that leaves the page is still reported).
   * @param {{decision_id: string}} decision  what decide() returned
   * @param {string} offerId  one of decision.offers' offer_id
   * @param {"impression"|"click"|"dismiss"} type
   */
  async report(decision, offerId, type) {
    if (!decision || typeof decision.decision_id !== "string") {
      throw new TypeError("`decision` must be what decide() returned");
    }
    const event = {
      event_id: eventId(),
      decision_id: decision.decision_id,
      offer_id: offerId,
      type,
      ts: new Date().toISOString(),
    };
    return this.request("/v1/events", { events: [event] }, { keepalive: true });
  }
}
