// A Plotly chart that is updated in place: a Streamlit components-v2 module, mounted in the page itself (no iframe).
//
// Streamlit's own st.plotly_chart makes the figure part of the element's identity, so every change (a moved
// marker) mounts a new chart: a new WebGL context, shaders and a full layout, 0.3-0.6 s in software GL. Here the
// chart div stays and each rerun is one Plotly.react: with `layout.datarevision` unchanged Plotly does not
// re-read the points, and the slider point, a layout shape, is redrawn alone (tens of ms).
//
// data (from app/components/scatter_chart): base (the figure's JSON text: points and layout, cached on the server),
// traces (overlays drawn after the points), shapes (layout shapes, the slider point), revision (changes with base
// or traces), config, height, plotly (the URL path of plotly.min.js under the app, served by Streamlit from the
// plotly package). A click on a point sets the trigger value "click" to its customdata (the atlas index).
// Plotly is loaded once per page as a classic script from the app's own host (window.Plotly).

const charts = new WeakMap(); // parentElement -> {gd, baseText, base, latest, busy, setTrigger}
let plotlyPromise = null;

function appBase() {
  // Streamlit's page loads its bundle from <app>/static/js/…: the app's root, whatever path it is served under.
  const script = document.querySelector("script[src*='/static/js/']");
  if (script) return script.src.slice(0, script.src.indexOf("static/js/"));
  return new URL("./", document.baseURI).href;
}

function loadPlotly(path) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = new URL(path, appBase()).href;
      script.async = true;
      script.onload = () => (window.Plotly ? resolve(window.Plotly) : reject(new Error("plotly.min.js did not define Plotly")));
      script.onerror = () => reject(new Error(`could not load ${script.src}`));
      document.head.appendChild(script);
    });
    plotlyPromise.catch(() => { plotlyPromise = null; });
  }
  return plotlyPromise;
}

function chartFor(parent) {
  let chart = charts.get(parent);
  if (chart && chart.gd.isConnected) return chart;
  const gd = document.createElement("div");
  gd.className = "scatter-chart";
  gd.style.width = "100%";
  parent.replaceChildren(gd);
  chart = { gd, baseText: null, base: null, latest: null, busy: false, setTrigger: null, width: 0 };
  charts.set(parent, chart);
  new ResizeObserver(() => {
    const width = Math.floor(parent.clientWidth);
    if (window.Plotly && chart.base && width > 0 && width !== chart.width) {
      chart.width = width;
      window.Plotly.relayout(gd, { width });
    }
  }).observe(parent);
  return chart;
}

function showError(parent, error) {
  const p = document.createElement("p");
  p.style.color = "#d62728";
  p.textContent = `The scatter could not be drawn: ${error && error.message ? error.message : error}`;
  parent.replaceChildren(p);
}

async function draw(parent, chart) {
  const Plotly = await loadPlotly(chart.latest.plotly);
  while (chart.latest) {
    const data = chart.latest;
    chart.latest = null;
    if (data.base !== chart.baseText) {
      chart.base = JSON.parse(data.base);
      chart.baseText = data.base;
    }
    chart.width = Math.floor(parent.clientWidth) || chart.width;
    const layout = { ...chart.base.layout, shapes: data.shapes, datarevision: data.revision, height: data.height };
    if (chart.width > 0) layout.width = chart.width;
    const first = !chart.gd.classList.contains("js-plotly-plot");
    await Plotly.react(chart.gd, chart.base.data.concat(data.traces), layout, data.config);
    if (first) {
      chart.gd.on("plotly_click", (event) => {
        const point = event && event.points && event.points[0];
        const index = point ? Number(Array.isArray(point.customdata) ? point.customdata[0] : point.customdata) : NaN;
        if (Number.isInteger(index) && chart.setTrigger) chart.setTrigger("click", index);
      });
    }
    chart.gd.dataset.renders = String(Number(chart.gd.dataset.renders || 0) + 1);
  }
}

function pump(parent, chart) {
  if (chart.busy || !chart.latest) return;
  chart.busy = true;
  draw(parent, chart)
    .catch((e) => showError(parent, e))
    .finally(() => {
      chart.busy = false;
      if (chart.latest && chart.gd.isConnected) pump(parent, chart);
    });
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const chart = chartFor(parentElement);
  chart.setTrigger = setTriggerValue;
  chart.latest = data; // the newest data wins: a render still drawing picks it up when done
  pump(parentElement, chart);
  // Streamlit calls the last cleanup when the element goes (another page, the thumbnails mode): free the WebGL context.
  return () => setTimeout(() => { if (!parentElement.isConnected && window.Plotly) window.Plotly.purge(chart.gd); }, 0);
}
