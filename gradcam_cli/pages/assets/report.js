// The filters and the viewer of index.html and comparison.html. Plain ES5-level DOM code;
// only textContent and attributes are set, never HTML.
(function () {
  var bar = document.getElementById('filters');
  var selects = Array.prototype.slice.call(bar.querySelectorAll('select'));
  var cards = Array.prototype.slice.call(document.querySelectorAll('#grid .card'));
  var shown = document.getElementById('shown');
  function apply() {
    var count = 0;
    cards.forEach(function (card) {
      var keep = selects.every(function (s) {
        return !s.value || card.getAttribute('data-' + s.name) === s.value;
      });
      card.hidden = !keep;
      if (keep) { count += 1; }
    });
    shown.textContent = count + ' of ' + cards.length + ' shown';
  }
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  bar.hidden = false;
  apply();

  var viewer = document.getElementById('viewer');
  if (!viewer.showModal) { return; }  // no <dialog>: the links open the files themselves
  var overlay = document.getElementById('viewer-overlay');
  var panel = document.getElementById('viewer-panel');
  document.getElementById('grid').addEventListener('click', function (event) {
    var link = event.target.closest('a.open');
    if (!link) { return; }
    event.preventDefault();
    var card = link.closest('.card');
    document.getElementById('viewer-title').textContent = card.querySelector('h2').textContent;
    overlay.src = link.getAttribute('href');
    var panelPath = link.getAttribute('data-panel');
    panel.hidden = !panelPath;
    if (panelPath) { panel.src = panelPath; } else { panel.removeAttribute('src'); }
    viewer.showModal();
  });
  viewer.addEventListener('click', function (event) {
    if (event.target === viewer) { viewer.close(); }
  });
})();
