// Draws the usage page's Vega-Lite specs (built by the server) as SVG, with the vendored vega-embed.
(function () {
  const specs = JSON.parse(document.getElementById("chart-specs").textContent);
  for (const [name, spec] of Object.entries(specs)) {
    const target = document.getElementById("chart-" + name);
    vegaEmbed(target, spec, { actions: false, renderer: "svg" }).then(
      () => target.setAttribute("data-drawn", "true"),
      (error) => { target.textContent = "chart failed: " + error; }
    );
  }
})();
