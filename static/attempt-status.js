// Keeps a return page honest: poll the attempt's state and reload when it changes.
(function () {
  var section = document.getElementById("attempt");
  if (!section) return;
  var url = section.dataset.statusUrl;
  var version = Number(section.dataset.version);
  var delay = 1000;

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) {
        if (state && state.version !== version) { window.location.reload(); return; }
        delay = Math.min(delay * 1.5, 5000);
        setTimeout(poll, delay);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, delay);
})();
