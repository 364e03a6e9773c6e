// Keeps the jobs page's "Running now" list current without reloading the page: every few seconds it
// asks api/running (the same rows the server rendered, already formatted) and rewrites the table's body
// with text nodes only, so nothing from a record is ever read as HTML.
(function () {
  const body = document.querySelector("#running tbody");
  if (!body) return;
  const every = Number(body.dataset.refreshMs) || 5000;
  const columns = ["state", "team", "task", "cluster", "elapsed", "queue_wait"];

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function draw(jobs) {
    const rows = jobs.map((job) => {
      const tr = document.createElement("tr");
      tr.className = "state-" + job.state.toLowerCase();
      const link = document.createElement("a");
      link.href = job.href;
      link.textContent = job.submission_id;
      const first = document.createElement("td");
      first.appendChild(link);
      tr.appendChild(first);
      for (const name of columns) tr.appendChild(cell(job[name]));
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(body.dataset.empty);
      td.colSpan = columns.length + 1;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    body.dataset.refreshedAt = new Date().toISOString();
  }

  async function refresh() {
    try {
      const response = await fetch("api/running", { credentials: "same-origin" });
      if (response.ok) draw((await response.json()).jobs);
    } finally {
      setTimeout(refresh, every);
    }
  }
  setTimeout(refresh, every);
})();
