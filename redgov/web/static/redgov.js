/* redgov serve: the pages' only script (the Content-Security-Policy allows no inline script).
 *
 * - Every htmx request carries the session's CSRF token (header X-CSRF-Token, from <meta name="csrf-token">).
 * - Live updates: a page whose <main> has data-events opens an EventSource on it (GET /events, Server-Sent
 *   Events of the scope streams). A relevant event refreshes the page's #live region from data-refresh
 *   (debounced), keeping what the user typed; so does every (re)connection, for what came as no event;
 *   a "reset" event reloads the page. When the browser gives up the stream (an answer that is not
 *   one), the page refreshes and reconnects with backoff (1 s doubling to 30 s); a refresh answered
 *   with the login page reloads the page instead of swapping it in.
 * - A "logout" event (the stream's last: its login ended by a logout here or elsewhere, its expiry, a
 *   changed password or a removed user) goes to the login form, which says why (/login?ended=<reason>),
 *   and back to this page after logging in.
 */
(function () {
  "use strict";

  var KINDS = ["state", "transition", "approval", "version", "policy", "rules"];
  var DEBOUNCE_MS = 120;
  var RETRY_MIN_MS = 1000;
  var RETRY_MAX_MS = 30000;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    var token = csrfToken();
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  function page() {
    return document.getElementById("page");
  }

  // -- keeping what the user typed across a refresh --------------------------------------------

  function fieldsOf(region) {
    return region.querySelectorAll("input[id], textarea[id], select[id]");
  }

  function saveFields(region) {
    var saved = { values: {}, open: [], focus: null, selection: null };
    Array.prototype.forEach.call(fieldsOf(region), function (field) {
      if (field.type === "hidden" || field.type === "submit") {
        return;
      }
      saved.values[field.id] = field.value;
    });
    Array.prototype.forEach.call(region.querySelectorAll("details[open]"), function (details, i) {
      saved.open.push(details.className || String(i));
    });
    var active = document.activeElement;
    if (active && active.id && region.contains(active)) {
      saved.focus = active.id;
      try {
        saved.selection = [active.selectionStart, active.selectionEnd];
      } catch (ignored) {
        saved.selection = null;
      }
    }
    return saved;
  }

  function restoreFields(saved) {
    var region = document.getElementById("live");
    if (!region) {
      return;
    }
    Object.keys(saved.values).forEach(function (id) {
      var field = document.getElementById(id);
      if (field && region.contains(field) && field.value !== saved.values[id]) {
        field.value = saved.values[id];
      }
    });
    Array.prototype.forEach.call(region.querySelectorAll("details"), function (details, i) {
      if (saved.open.indexOf(details.className || String(i)) >= 0) {
        details.open = true;
      }
    });
    if (saved.focus) {
      var focused = document.getElementById(saved.focus);
      if (focused) {
        focused.focus();
        if (saved.selection && focused.setSelectionRange && saved.selection[0] !== null) {
          try {
            focused.setSelectionRange(saved.selection[0], saved.selection[1]);
          } catch (ignored) { /* not a text field */ }
        }
      }
    }
  }

  // -- live updates ------------------------------------------------------------------------------

  var timer = null;
  var running = false;
  var again = false;
  var kept = null;

  function refresh() {
    timer = null;
    var main = page();
    var region = document.getElementById("live");
    if (!main || !region || !window.htmx) {
      return;
    }
    if (running) {
      again = true;
      return;
    }
    running = true;
    var url = main.dataset.refresh || (location.pathname + location.search);
    window.htmx.ajax("GET", url, { target: "#live", select: "#live", swap: "outerHTML" }).then(function () {
      if (kept !== null) {
        restoreFields(kept);
        kept = null;
      }
    }, function () { /* the next event tries again */ }).then(function () {
      running = false;
      document.body.dataset.refreshed = String(Date.now());
      if (again) {
        again = false;
        schedule();
      }
    });
  }

  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(refresh, DEBOUNCE_MS);
    }
  }

  // a refresh (or an htmx form) the server answered with the login page: the login ended (logout
  // elsewhere, expiry, a changed password). Swapping that page into #live would remove the region;
  // reload instead, so the browser follows the server to the login form and back here after it.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.responseURL && new URL(xhr.responseURL, location.href).pathname === "/login"
        && location.pathname !== "/login") {
      event.detail.shouldSwap = false;
      location.reload();
      return;
    }
    var target = event.detail.target;
    if (target && target.id === "live") {
      // what the user typed up to this moment (not when the refresh was asked for: typing goes on
      // while it is under way), put back once the new region is in
      kept = saveFields(target);
    }
  });

  var source = null;
  var retryMs = RETRY_MIN_MS;
  var retryTimer = null;

  function setStatus(on, title) {
    var status = document.getElementById("live-status");
    if (status) {
      status.hidden = false;
      status.classList.toggle("off", !on);
      status.title = title;
    }
  }

  function connect() {
    var main = page();
    if (!main || !main.dataset.events || !window.EventSource) {
      return;
    }
    if (source) {
      source.close();
    }
    var current = new EventSource(main.dataset.events);
    source = current;
    current.addEventListener("open", function () {
      retryMs = RETRY_MIN_MS;
      setStatus(true, "live: this page updates itself");
      // what was written between the page's rendering and now (or while disconnected) came as no event
      schedule();
    });
    current.addEventListener("error", function () {
      setStatus(false, "reconnecting to the live feed");
      if (current.readyState === EventSource.CLOSED && retryTimer === null) {
        // the browser gave up (an answer that is no event stream: the login page, a 503 while the
        // server restarts): refresh (which finds an ended login) and open the feed again later
        schedule();
        retryTimer = window.setTimeout(function () {
          retryTimer = null;
          connect();
        }, retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      }
    });
    KINDS.forEach(function (kind) {
      // the feed is already filtered by the page's scope and experiment: any event may change the page
      current.addEventListener(kind, schedule);
    });
    current.addEventListener("reset", function () {
      current.close();
      location.reload();
    });
    current.addEventListener("logout", function (event) {
      var reason = "";
      try {
        reason = String(JSON.parse(event.data).reason || "");
      } catch (ignored) { /* the login form then says nothing more */ }
      current.close();
      source = null;
      if (retryTimer !== null) {
        window.clearTimeout(retryTimer);
        retryTimer = null;
      }
      var query = new URLSearchParams({ ended: reason, next: location.pathname + location.search });
      location.assign("/login?" + query.toString());
    });
  }

  function startLive() {
    connect();
    window.addEventListener("pagehide", function () {
      if (source) {
        source.close();
      }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) { // back from the browser's page cache: the feed was closed on the way out
        connect();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLive);
  } else {
    startLive();
  }
}());
