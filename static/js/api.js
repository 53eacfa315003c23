// REST calls from the page: the admin token (when the server needs one) rides as a Bearer
// header, and the server's error shape {"error": {"code", "message"}} becomes an Error.

const TOKEN_KEY = "fedavg.adminToken";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const adminToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY) ?? "",
  set: (value) => (value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY)),
};

export async function api(method, path, { admin = false } = {}) {
  const headers = { Accept: "application/json" };
  const token = admin ? adminToken.get() : "";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the orchestrator (${err.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to a generic message below
  }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? "http", error.message ?? `${response.status} ${response.statusText}`);
  }
  return body;
}
