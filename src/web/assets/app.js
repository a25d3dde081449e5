// Optional enhancement: auto-refresh that pauses while the tab is hidden. Without JavaScript
// the page's <noscript> meta refresh does the same job.
(function () {
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (!(seconds > 0)) return;
  var due = Date.now() + seconds * 1000;
  setInterval(function () {
    if (document.visibilityState === "visible" && Date.now() >= due) location.reload();
  }, 1000);
})();
