// Typeset the math of a page with the KaTeX vendored in docs/vendor/katex (no network).
// pymdownx.arithmatex (generic mode) writes inline math as \( ... \) and display math as
// \[ ... \]; the table of contents repeats a heading's \( ... \) as plain text, so the whole body
// is scanned (auto-render skips <pre>, <code>, <script> and the like: code is never touched).
(function () {
  var options = {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false, // a formula KaTeX cannot parse shows as red source, the rest still renders
  };

  function render() {
    renderMathInElement(document.body, options);
  }

  // Material's document$ emits on every page load, also under navigation.instant.
  if (typeof document$ !== "undefined") {
    document$.subscribe(render);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
