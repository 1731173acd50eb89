// The episode browser of report.html: filters over the embedded episodes and
// one episode rendered. Every string comes from the run (model output, data
// values): it is only ever set through textContent, never parsed as HTML.
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('episode-data').textContent);
  var $ = function (id) { return document.getElementById(id); };
  var fDataset = $('f-dataset'), fTemplate = $('f-template'), fVerified = $('f-verified'), fSearch = $('f-search');
  var tbody = $('episode-list').querySelector('tbody'), detail = $('episode-detail'), count = $('episode-count');
  var MAX_ROWS = 500;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function options(select, values) {
    values.forEach(function (v) { var o = el('option', null, v); o.value = v; select.appendChild(o); });
  }
  function uniq(key) {
    var seen = {};
    data.forEach(function (e) { seen[e[key]] = true; });
    return Object.keys(seen).sort();
  }
  options(fDataset, uniq('dataset'));
  options(fTemplate, uniq('template'));

  function haystack(e) {
    if (!e._text) {
      var parts = [e.id, e.question, e.answer, e.template, e.dataset, e.reason];
      e.traces.forEach(function (t) { t.turns.forEach(function (u) { parts.push(u.code, u.stdout); }); });
      e._text = parts.join('\n').toLowerCase();
    }
    return e._text;
  }
  function matches(e) {
    if (fDataset.value && e.dataset !== fDataset.value) return false;
    if (fTemplate.value && e.template !== fTemplate.value) return false;
    if (fVerified.value === 'yes' && !e.verified) return false;
    if (fVerified.value === 'no' && e.verified) return false;
    var q = fSearch.value.trim().toLowerCase();
    return !q || haystack(e).indexOf(q) >= 0;
  }

  var selected = null;
  function render() {
    var shown = data.filter(matches);
    count.textContent = shown.length + ' of ' + data.length + ' episodes' + (shown.length > MAX_ROWS ? ' (first ' + MAX_ROWS + ' listed)' : '');
    tbody.replaceChildren();
    shown.slice(0, MAX_ROWS).forEach(function (e) {
      var tr = el('tr');
      tr.dataset.id = e.id;
      if (e.id === selected) tr.className = 'selected';
      tr.appendChild(el('td', null, e.id.slice(0, 12)));
      tr.appendChild(el('td', null, e.dataset));
      tr.appendChild(el('td', null, e.template));
      tr.appendChild(el('td', null, e.difficulty));
      tr.appendChild(el('td', e.verified ? 'ok' : 'bad', e.verified ? 'verified' : 'unverified'));
      var q = el('td', 'q', e.question); q.title = e.question; tr.appendChild(q);
      tr.addEventListener('click', function () { show(e.id); });
      tbody.appendChild(tr);
    });
    return shown;
  }

  function kv(pairs) {
    var dl = el('dl', 'kv');
    pairs.forEach(function (p) {
      if (p[1] === '' || p[1] === null || p[1] === undefined) return;
      dl.appendChild(el('dt', null, p[0]));
      dl.appendChild(el('dd', p[2] || null, p[1]));
    });
    return dl;
  }
  function pre(label, text, parent) {
    if (!text) return;
    parent.appendChild(el('div', 'muted', label));
    parent.appendChild(el('pre', null, text));
  }

  function show(id) {
    var e = null;
    for (var i = 0; i < data.length; i++) if (data[i].id === id) { e = data[i]; break; }
    if (!e) return;
    selected = id;
    Array.prototype.forEach.call(tbody.children, function (tr) { tr.className = tr.dataset.id === id ? 'selected' : ''; });
    detail.replaceChildren();
    detail.dataset.episode = id;
    detail.appendChild(el('h3', null, e.question));
    detail.appendChild(kv([
      ['episode', e.id], ['dataset', e.dataset], ['template', e.template], ['difficulty', e.difficulty],
      ['hint', e.hint], ['verdict', e.verified ? 'verified' : 'unverified', e.verified ? 'ok' : 'bad'],
      ['reason', e.reason], ['diagnosis', e.diagnosis], ['answer', e.answer], ['ground truth', e.ground_truth],
      ['majority', e.majority], ['gold = majority', e.gold_matches_majority ? 'yes' : 'no'],
      ['gold = ground truth', e.gold_matches_ground_truth === null ? '' : (e.gold_matches_ground_truth ? 'yes' : 'no')]
    ]));
    e.traces.forEach(function (t, n) {
      var head = (n === 0 ? 'gold trace' : 'consistency trace ' + n) + (t.label ? ' `' + t.label + '`' : '') +
        ': ' + (t.success ? 'submitted' : 'no answer') + ' (' + t.elapsed.toFixed(2) + ' s)';
      var section = el('section', 'trace');
      section.appendChild(el('h4', null, head));
      section.appendChild(kv([['answer', t.answer], ['error', t.error, 'bad']]));
      t.turns.forEach(function (u, k) {
        var turn = el('div', 'turn');
        turn.appendChild(el('div', null, 'turn ' + (k + 1) + ' · ' + u.status + ' · ' + u.elapsed_ms.toFixed(1) + ' ms'));
        if (u.reasoning) turn.appendChild(el('div', 'muted', u.reasoning));
        pre('code', u.code, turn);
        pre('stdout', u.stdout, turn);
        pre('stderr', u.stderr, turn);
        pre('result', u.result, turn);
        pre('error', u.error, turn);
        pre('submitted', u.submitted, turn);
        if (u.hooks.length) {
          turn.appendChild(el('div', 'muted', 'hooks'));
          var ul = el('ul', 'hooks');
          u.hooks.forEach(function (h) { ul.appendChild(el('li', null, (h.name ? h.name + ' = ' : '') + h.value + '   ← ' + h.line)); });
          turn.appendChild(ul);
        }
        section.appendChild(turn);
      });
      detail.appendChild(section);
    });
    var hash = '#episode=' + encodeURIComponent(id);
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  [fDataset, fTemplate, fVerified].forEach(function (c) { c.addEventListener('change', render); });
  fSearch.addEventListener('input', render);

  // State from the address: #dataset=…&template=…&verified=yes|no&q=…&episode=…
  var params = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (params.get('dataset')) fDataset.value = params.get('dataset');
  if (params.get('template')) fTemplate.value = params.get('template');
  if (params.get('verified')) fVerified.value = params.get('verified');
  if (params.get('q')) fSearch.value = params.get('q');
  var shown = render();
  if (params.get('episode')) show(params.get('episode'));
  else if (shown.length) show(shown[0].id);
  window.csvAgentReport = { render: render, show: show, episodes: data.length };
})();
