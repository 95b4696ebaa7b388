// Types of the recsys browser client (recsys.js, served at /client/recsys.js).

export interface RecsysClientOptions {
  /** An rk_pub_ key: public, it is in the page. */
  publishableKey: string;
  /** The signed-in customer's short-lived token, made by your server. */
  customerToken: string;
  /** The decision service; default this page's origin. */
  baseUrl?: string;
  /** Default the browser's fetch. */
  fetch?: typeof fetch;
}

export interface DecideOptions {
  /** Must be the customer of the customer token (403 otherwise). */
  customerId: string;
  touchpoint: string;
  context?: Record<string, string | number | boolean | null>;
  limit?: number;
  excludeOffers?: string[];
  /** Experiment assignment unit, e.g. an anonymous visitor's first-party cookie id. */
  unitId?: string;
}

export interface BrowserOffer {
  offer_id: string;
  name: string;
  rank: number;
}

/** A decision as a browser gets it (no scores; the full shape with browser_full_response). */
export interface BrowserDecision {
  decision_id: string;
  customer_id: string;
  touchpoint: string;
  ts: string;
  offers: BrowserOffer[];
}

export type BrowserEventType = "impression" | "click" | "dismiss";

export interface EventsResult {
  received: number;
  new: number;
  duplicates: number;
  rejected: number;
  errors: ErrorItem[];
}

export interface ErrorItem {
  field: string;
  expected: string;
  received: unknown;
  message: string;
}

export class RecsysError extends Error {
  readonly status: number;
  readonly errors: ErrorItem[];
  /** Seconds to wait after a 429, when the service said. */
  readonly retryAfter: number | null;
}

export class RecsysClient {
  constructor(options: RecsysClientOptions);
  setCustomerToken(customerToken: string): void;
  decide(options: DecideOptions): Promise<BrowserDecision>;
  impression(decision: Pick<BrowserDecision, "decision_id">, offerId: string): Promise<EventsResult>;
  click(decision: Pick<BrowserDecision, "decision_id">, offerId: string): Promise<EventsResult>;
  dismiss(decision: Pick<BrowserDecision, "decision_id">, offerId: string): Promise<EventsResult>;
  report(
    decision: Pick<BrowserDecision, "decision_id">,
    offerId: string,
    type: BrowserEventType,
  ): Promise<EventsResult>;
}
