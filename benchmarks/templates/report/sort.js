// Sortable tables without a library: click a header with data-type="number" or "text" to sort the body rows by
// that column (the cells' data-value); empty values always go last.  Headers spanning several columns are skipped
// when counting, so two-row headers (pair, then ours / paper / delta) sort the right column.
(function () {
  "use strict";
  function columnIndex(table, header) {
    var row = header.parentElement;
    var rows = Array.prototype.slice.call(table.tHead.rows);
    if (rows.length > 1 && row === rows[0] && header.rowSpan > 1) { return 0; }
    var index = 0;
    var cells = row.cells;
    for (var i = 0; i < cells.length; i += 1) {
      if (cells[i] === header) { break; }
      index += cells[i].colSpan;
    }
    if (rows.length > 1 && row !== rows[0]) {
      var leading = 0;  // columns of the first header row that span both rows (the method column)
      for (var j = 0; j < rows[0].cells.length; j += 1) {
        if (rows[0].cells[j].rowSpan > 1) { leading += rows[0].cells[j].colSpan; }
      }
      index += leading;
    }
    return index;
  }
  function sortBy(table, header) {
    var index = columnIndex(table, header);
    var numeric = header.getAttribute("data-type") === "number";
    var descending = header.getAttribute("aria-sort") !== "descending";
    var headers = table.tHead.querySelectorAll("th[data-type]");
    for (var k = 0; k < headers.length; k += 1) { headers[k].removeAttribute("aria-sort"); }
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index] ? a.cells[index].getAttribute("data-value") : "";
      var y = b.cells[index] ? b.cells[index].getAttribute("data-value") : "";
      if (x === "" || x === null) { return (y === "" || y === null) ? 0 : 1; }
      if (y === "" || y === null) { return -1; }
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  var tables = document.querySelectorAll("table.sortable");
  for (var t = 0; t < tables.length; t += 1) {
    (function (table) {
      var headers = table.tHead.querySelectorAll("th[data-type]");
      for (var h = 0; h < headers.length; h += 1) {
        headers[h].addEventListener("click", function (event) { sortBy(table, event.currentTarget); });
      }
    })(tables[t]);
  }
}());
