/* edgefleet dashboard: live updates (server-sent events) and uPlot charts. No inline scripts (CSP). */
(function () {
  "use strict";
  var PALETTE = ["#2563eb", "#8a5cd6", "#d64545", "#1f9d55", "#d9822b", "#0891b2"];
  var CHART_REFRESH_MS = 10000;
  var plots = [];

  function fmt(v) {
    if (v === null || v === undefined) return "\u2014";
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10 || Number.isInteger(v)) return Number.isInteger(v) ? String(v) : v.toFixed(1);
    return v.toFixed(2);
  }

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  /* Tick labels that never repeat: seconds when the ticks are less than a minute apart, dates beyond two days. */
  function timeLabels(u, splits) {
    var span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
    var step = splits.length > 1 ? splits[1] - splits[0] : 60;
    var prev = null;
    return splits.map(function (ts) {
      var d = new Date(ts * 1000);
      var label = pad(d.getHours()) + ":" + pad(d.getMinutes()) + (step < 60 ? ":" + pad(d.getSeconds()) : "");
      if (span > 2 * 86400) label = (d.getMonth() + 1) + "/" + d.getDate();
      var out = label === prev ? "" : label;
      prev = label;
      return out;
    });
  }

  function alpha(hex, a) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }

  /* The slot holding "now" is not over: its sums are partial. It is drawn dashed from the last complete point,
     on a shaded band marked "so far", never as a drop at the right edge. */
  function withPartial(x, series, partialFrom) {
    var k = partialFrom === null || partialFrom === undefined ? -1 : x.indexOf(partialFrom);
    if (k < 0) return series;
    var done = series.map(function (s) {
      return { label: s.label, unit: s.unit, values: s.values.map(function (v, i) { return i >= k ? null : v; }) };
    });
    var sofar = series.map(function (s) {
      return { label: s.label + " (so far)", unit: s.unit, partial: true,
               values: s.values.map(function (v, i) { return i >= k - 1 ? v : null; }) };
    });
    return done.concat(sofar);
  }

  function partialStart(x, partialFrom) {  // the band starts at the last complete point (the dashed segment)
    var k = partialFrom === null || partialFrom === undefined ? -1 : x.indexOf(partialFrom);
    return k < 0 ? null : x[Math.max(0, k - 1)];
  }

  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
    return null;
  }

  function shadePartial(meta) {
    return { hooks: { drawClear: [function (u) {
      if (meta.partial === null || meta.partial === undefined) return;
      var left = Math.max(u.bbox.left, u.valToPos(meta.partial, "x", true));
      var right = u.bbox.left + u.bbox.width;
      if (right <= left) return;
      var ctx = u.ctx;
      ctx.save();
      ctx.fillStyle = "rgba(103, 116, 137, 0.10)";
      ctx.fillRect(left, u.bbox.top, right - left, u.bbox.height);
      ctx.fillStyle = "#677489";
      ctx.font = (10 * devicePixelRatio) + "px system-ui";
      ctx.textAlign = "right";
      ctx.fillText("so far", right - 3 * devicePixelRatio, u.bbox.top + 11 * devicePixelRatio);
      ctx.restore();
    }] } };
  }

  function draw(fig, x, series, partialFrom) {
    var plotEl = fig.querySelector(".plot");
    var points = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null) points++; }); });
    fig.dataset.points = String(points);
    fig.dataset.ready = "1";
    fig.dataset.partial = partialFrom === null || partialFrom === undefined ? "" : String(partialFrom);
    var shown = withPartial(x, series, partialFrom);
    var data = [x].concat(shown.map(function (s) { return s.values; }));
    var existing = plots.find(function (p) { return p.fig === fig; });
    var sig = shown.map(function (s) { return s.label; }).join("|");
    if (existing && existing.sig === sig) {
      existing.meta.partial = partialStart(x, partialFrom);
      existing.u.setData(data);
    } else {
      if (existing) { existing.u.destroy(); plots.splice(plots.indexOf(existing), 1); }
      plotEl.textContent = "";
      var first = fig.dataset.color || PALETTE[0];
      var meta = { partial: partialStart(x, partialFrom) };
      var base = series.length;
      var colorOf = function (i) { var j = i % base; return j === 0 ? first : PALETTE[(j + 1) % PALETTE.length]; };
      var opts = {
        width: Math.max(200, plotEl.clientWidth), height: 190,
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
        plugins: [shadePartial(meta)],
        scales: { x: { time: true }, y: fig.dataset.max ? { range: [0, Number(fig.dataset.max)] } : { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } } },
        axes: [
          { stroke: "#677489", grid: { stroke: "#eef1f6" }, ticks: { stroke: "#e2e7ef" }, font: "11px system-ui", values: timeLabels, space: 56 },
          { stroke: "#677489", grid: { stroke: "#eef1f6" }, ticks: { stroke: "#e2e7ef" }, font: "11px system-ui", size: 48, values: function (u, vals) { return vals.map(fmt); } }
        ],
        series: [{ label: "time" }].concat(shown.map(function (s, i) {
          var color = colorOf(i);
          return {
            label: s.label, stroke: color, width: 1.5, dash: s.partial ? [4, 3] : undefined,
            fill: base === 1 && !s.partial ? alpha(color, 0.08) : undefined,
            points: { show: false }, spanGaps: false,
            // without a cursor the legend shows the latest complete value, not a dash
            value: function (u, v, si, idx) {
              if (idx === null || idx === undefined) v = lastValue(u.data[si]);
              return v === null || v === undefined ? "\u2014" : fmt(v) + " " + s.unit;
            }
          };
        }))
      };
      var u = new uPlot(opts, data, plotEl);
      u.root.querySelectorAll(".u-legend .u-series").forEach(function (row, i) {
        if (i > base) row.classList.add("partial");  // the dashed "so far" twins share their line's legend
      });
      plots.push({ fig: fig, u: u, sig: sig, meta: meta });
    }
    var empty = plotEl.querySelector(".nodata");
    if (points === 0 && !empty) {
      empty = document.createElement("div");
      empty.className = "nodata";
      empty.textContent = "No data in this range";
      plotEl.appendChild(empty);
    } else if (points > 0 && empty) {
      empty.remove();
    }
  }

  function loadGroup(group) {
    var url = group.dataset.src + "?range=" + encodeURIComponent(group.dataset.range || "1h");
    group.dataset.loading = "1";
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        group.querySelectorAll("figure.chart").forEach(function (fig) {
          var key = fig.dataset.key;
          if (key === "util" && d.util) { draw(fig, d.util.x, d.util.series, null); }
          else if (d.charts && d.charts[key]) { draw(fig, d.x, d.charts[key], d.partial_from); }
        });
        group.dataset.loaded = String(Date.now());
      })
      .catch(function (e) { group.dataset.error = String(e); })
      .finally(function () { delete group.dataset.loading; });
  }

  function initCharts(root) {
    (root || document).querySelectorAll(".chart-group").forEach(function (group) {
      if (group.dataset.init) return;
      group.dataset.init = "1";
      group.querySelectorAll(".seg button").forEach(function (b) {
        b.addEventListener("click", function () {
          group.querySelectorAll(".seg button").forEach(function (o) { o.classList.toggle("on", o === b); });
          group.dataset.range = b.dataset.range;
          loadGroup(group);
        });
      });
      loadGroup(group);
    });
  }

  function refreshCharts(now) {
    document.querySelectorAll(".chart-group").forEach(function (group) {
      var last = Number(group.dataset.loaded || 0);
      if (!group.dataset.loading && (now || Date.now() - last >= CHART_REFRESH_MS)) loadGroup(group);
    });
  }

  /* Live updates. The hub sends `update` when anything changed and `ping` every 15 s; when the stream breaks
     and does not come back within STALE_AFTER_MS, or stays silent for SILENT_MS, the page says so in words:
     the badge reads "stale" and a banner tells since when nothing arrived (the page stops pretending). */
  var STALE_AFTER_MS = 4000;
  var SILENT_MS = 45000;

  function clock(d) { return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }

  function startLive() {
    var src = document.body.dataset.live;
    if (!src || !window.EventSource) return;
    var badge = document.getElementById("live");
    var banner = document.getElementById("stale");
    var es = null, connected = true, shown = false, stale = false, lastSeen = Date.now(), staleTimer = null;

    function setBadge(text, title, on) {
      if (!badge) return;
      badge.textContent = text;
      badge.title = title;
      badge.classList.toggle("on", on);
      badge.classList.toggle("stale", text === "stale");
    }
    function markStale() {
      if (connected || stale) return;
      stale = true;
      document.body.dataset.stale = "1";
      setBadge("stale", "live updates stopped: the hub does not answer", false);
      if (banner) {
        banner.querySelector("[data-since]").textContent = clock(new Date(lastSeen));
        banner.hidden = false;
      }
    }
    function seen() {
      lastSeen = Date.now();
      clearTimeout(staleTimer);
      connected = true;
      if (!shown) {
        shown = true;
        setBadge("live", "live updates: connected", true);
      }
      if (stale) {  // back after a gap: what is on the page is old, fetch it all again
        stale = false;
        delete document.body.dataset.stale;
        if (banner) banner.hidden = true;
        if (window.htmx) window.htmx.trigger(document.body, "fleet:update");
        refreshCharts(true);
      }
    }
    function lost() {  // called again on every failed retry: the first one starts the clock
      if (!connected) return;
      connected = false;
      shown = false;
      setBadge("reconnecting", "live updates: reconnecting", false);
      staleTimer = setTimeout(markStale, STALE_AFTER_MS);
    }
    function closed() {
      /* The browser gave up on the stream: the hub answered, but not with one. Logged out (the token was
         revoked, the cookie expired): go to the login form, which comes back here. Else (a 503 while the
         database is away, a proxy's 502): try again in a while, as for a hub that does not answer. */
      fetch(src, { credentials: "same-origin", headers: { Accept: "text/event-stream" } })
        .then(function (r) {
          if (r.status === 401) {
            location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
            return;
          }
          if (r.body) r.body.cancel();
          setTimeout(connect, STALE_AFTER_MS);
        })
        .catch(function () { setTimeout(connect, STALE_AFTER_MS); });
    }
    function connect() {
      es = new EventSource(src);
      es.addEventListener("open", seen);
      es.addEventListener("ping", seen);
      es.addEventListener("error", function () {
        lost();
        if (es.readyState === EventSource.CLOSED) closed();
      });
      es.addEventListener("update", function () {
        seen();
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
        if (window.htmx) window.htmx.trigger(document.body, "fleet:update");
        refreshCharts();
      });
    }
    connect();
    setInterval(function () {  // a stream that stays open but silent: a hung hub or a dead proxy
      if (connected && Date.now() - lastSeen > SILENT_MS) {
        es.close();
        lost();
        connect();
      }
    }, 5000);
    window.addEventListener("pagehide", function () { es.close(); });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      plots.forEach(function (p) { var el = p.fig.querySelector(".plot"); p.u.setSize({ width: Math.max(200, el.clientWidth), height: 190 }); });
    }, 100);
  });

  document.addEventListener("DOMContentLoaded", function () {
    initCharts(document);
    startLive();
    document.body.addEventListener("htmx:afterSettle", function (e) { initCharts(e.target); });
  });
})();
