// The dashboard's one WebSocket: /ws/dashboard on the page's own host. When it drops, it
// reconnects with exponential backoff plus jitter; each new connection starts with a fresh
// snapshot, so nothing missed while away needs replaying.

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class DashboardSocket {
  /**
   * @param {{onMessage: (msg: object) => void, onStatus: (status: string, detail?: object) => void}} handlers
   */
  constructor({ onMessage, onStatus }) {
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.attempt = 0;
    this.ws = null;
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = `${scheme}//${location.host}/ws/dashboard`;
  }

  connect() {
    clearTimeout(this.timer);
    this.onStatus("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("message", (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn("dashboard: ignoring a frame that is not JSON");
        return;
      }
      if (msg.type === "snapshot") {
        this.attempt = 0;
        this.onStatus("live");
      }
      this.onMessage(msg);
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.scheduleReconnect();
    });
    // An error is always followed by close; the reconnect is scheduled there.
  }

  scheduleReconnect() {
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.onStatus("reconnecting", { retryAt: Date.now() + delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
