// Import Clients: read a CSV file, preview a verdict per row (the batch API with
// dry_run), send in pieces with a progress bar, then show and offer the results as CSV.
(function () {
  "use strict";

  var root = document.getElementById("import");
  if (!root) { return; }
  // The page's words in its language (app.js; the English message when one is missing).
  var words = window.ClientPress.words;
  var portalId = root.getAttribute("data-portal-id");
  var csrfToken = root.getAttribute("data-csrf-token");
  var maxRows = parseInt(root.getAttribute("data-max-rows"), 10);
  var api = "/api/v1/portals/" + portalId + "/invitations/batch";
  var PIECE = 500; // rows per request while sending: the progress bar's step
  var COLUMNS = ["email", "name", "personal_message", "sub_client"];

  var fileInput = document.getElementById("import_file");
  // The page's parts (import.html): el.error is #import-error, el.progressBox
  // #import-progress-box.
  var el = {};
  ["error", "status", "preview", "previewTable", "summary", "send", "progressBox", "progress",
    "progressText", "results", "resultsTable", "resultsSummary", "download"
  ].forEach(function (name) {
    el[name] = document.getElementById("import-" + name.replace(/[A-Z]/g, "-$&").toLowerCase());
  });

  var rows = [];      // {email, name, personal_message, sub_client} per data row
  var delimiter = ",";  // the file's separator: Download Results uses it too
  var unread = [];    // the file's column names that aren't read, as the file spells them
  var verdicts = [];  // the preview's result per row
  var importId = null;

  function fail(message) {
    el.error.textContent = message;
    el.error.hidden = false;
    el.status.textContent = "";
  }

  // The focus goes where the person's attention goes next, so that it is read out and the
  // next Tab goes on from there: the preview's summary (then Send Invitations), the progress
  // while Send Invitations is off, the results (then Download Results), or why a send stopped.
  // Left on the disabled button, it would fall back to the top of the page.
  function moveFocus(element) {
    if (!element.hasAttribute("tabindex")) { element.setAttribute("tabindex", "-1"); }
    element.focus();
  }

  function clear() {
    el.error.hidden = true;
    el.error.textContent = "";
    el.preview.hidden = true;
    el.progressBox.hidden = true;
    el.results.hidden = true;
  }

  // A spreadsheet saved in French, German and many other languages separates with ";".
  var DELIMITERS = [",", ";", "\t"];
  // A first line "sep=;" (which Excel writes and reads) names the separator.
  var SEP_LINE = /^[\r\n]*sep=([,;\t|])[ \t]*(\r\n|\r|\n|$)/i;
  // The email and name columns as people head them in the languages the pages speak:
  // the batch API's own list (handlers/bulk.py COLUMN_ALIASES), given by the page.
  var ALIASES = JSON.parse(root.getAttribute("data-column-aliases"));

  // A header cell's column: "Personal Message", "sub-client" and "E-Mail" name
  // personal_message, sub_client and email (as the batch API reads them).
  function column(cell) {
    var name = cell.trim().toLowerCase().replace(/[ -]/g, "_");
    return ALIASES[name] || name;
  }

  // RFC 4180: quoted fields may hold the separator, quotes ("") and line breaks; a quote
  // inside an unquoted value is itself (as the batch API and spreadsheets read it). A
  // quoted value never closed, or text after its closing quote, is refused with the line
  // its record starts on (counted from firstLine), as the batch API says it.
  function parseCsv(text, separator, firstLine) {
    var records = [], record = [], field = "", i = 0, quoted = false, closed = false, c;
    var line = firstLine || 1, starts = line;
    function broken(kind) {
      var error = new Error(kind);
      error.csv = kind;
      error.line = starts;
      return error;
    }
    while (i < text.length) {
      c = text[i];
      if (quoted) {
        if (c === "\"") {
          if (text[i + 1] === "\"") { field += "\""; i += 2; continue; }
          quoted = false; closed = true; i += 1; continue;
        }
        if (c === "\n" || (c === "\r" && text[i + 1] !== "\n")) { line += 1; }
        field += c; i += 1; continue;
      }
      if (c === separator) { record.push(field); field = ""; closed = false; i += 1; continue; }
      if (c === "\r" || c === "\n") {
        record.push(field); field = ""; closed = false;
        records.push(record); record = [];
        i += (c === "\r" && text[i + 1] === "\n") ? 2 : 1;
        line += 1; starts = line;
        continue;
      }
      if (closed) { throw broken("quote"); }
      if (c === "\"" && field === "") { quoted = true; i += 1; continue; }
      field += c; i += 1;
    }
    if (quoted) { throw broken("unterminated"); }
    if (field !== "" || closed || record.length) { record.push(field); records.push(record); }
    return records.filter(function (r) {
      return r.some(function (cell) { return cell.trim() !== ""; });
    });
  }

  // The separator that makes the first row name an email column: a comma, else a
  // semicolon or a tab (a comma when none does, so the file is refused for its header).
  function delimiterOf(text) {
    var first = (/^.*\S.*$/m.exec(text) || [""])[0];
    for (var i = 0; i < DELIMITERS.length; i += 1) {
      var header;
      try {
        header = parseCsv(first, DELIMITERS[i])[0] || [];
      } catch (e) {
        header = [];
      }
      if (header.map(column).indexOf("email") !== -1) { return DELIMITERS[i]; }
    }
    return ",";
  }

  function readRows(text) {
    if (text.indexOf("\u0000") !== -1) {
      throw new Error(words("The file is not a CSV file."));
    }
    var records, firstLine = 1;
    var given = SEP_LINE.exec(text);
    if (given) {  // Excel's "sep=;" first line names the separator
      delimiter = given[1];
      text = text.slice(given[0].length);
      firstLine += given[0].split(/\r\n|\r|\n/).length - 1;
    } else {
      delimiter = delimiterOf(text);
    }
    try {
      records = parseCsv(text, delimiter, firstLine);
    } catch (e) {
      if (!e.csv) { throw e; }
      throw new Error(e.csv === "unterminated" ?
        words("The file is not a CSV file: a quoted value on line {line} never ends.",
          {line: e.line}) :
        words("The file is not a CSV file: line {line} has a quote inside a value.",
          {line: e.line}));
    }
    if (!records.length) { throw new Error(words("The file is empty.")); }
    var header = records[0].map(column);
    if (header.indexOf("email") === -1) {
      throw new Error(words("The file has no email column: its first row must name the " +
        "columns (email, and optionally name, personal_message, sub_client)."));
    }
    var read = COLUMNS.map(function (name) { return header.indexOf(name); });
    unread = records[0].filter(function (name, at) {
      return name.trim() !== "" && read.indexOf(at) === -1;
    }).map(function (name) { return name.trim(); });
    var body = records.slice(1);
    if (!body.length) { throw new Error(words("The file has no rows under its header.")); }
    if (body.length > maxRows) {
      throw new Error(words("The file has {count} rows; at most {max} can be imported at once.",
        {count: body.length, max: maxRows}));
    }
    return body.map(function (record) {
      var row = {};
      COLUMNS.forEach(function (name) {
        var at = header.indexOf(name);
        var value = at === -1 || at >= record.length ? "" : record[at].trim();
        if (value !== "") { row[name] = value; }
      });
      if (!row.email) { row.email = ""; }
      return row;
    });
  }

  // A CSV cell "true"/"yes"/"1" or "false"/"no"/"0"; anything else is the row's problem.
  function flag(value) {
    if (value === undefined) { return undefined; }
    var v = value.toLowerCase();
    if (["true", "yes", "y", "1"].indexOf(v) !== -1) { return true; }
    if (["false", "no", "n", "0"].indexOf(v) !== -1) { return false; }
    return null;
  }

  function payload(row, number) {
    var item = {email: row.email};
    if (row.name) { item.name = row.name; }
    if (row.personal_message) { item.personal_message = row.personal_message; }
    var sub = flag(row.sub_client);
    if (sub !== undefined && sub !== null) { item.sub_client = sub; }
    if (number !== undefined) { item.key = "import-" + importId + "-" + number; }
    return item;
  }

  // The batch API's query: a preview (dry_run) and the chosen Language (locale).
  function query(dryRun) {
    var params = [];
    if (dryRun) { params.push("dry_run=true"); }
    var locale = document.getElementById("import_locale").value;
    if (locale) { params.push("locale=" + encodeURIComponent(locale)); }
    return params.length ? "?" + params.join("&") : "";
  }

  function post(body, dryRun) {
    return fetch(api + query(dryRun), {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken},
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (!response.ok) {
          var error = new Error((json.error && json.error.message) ||
            words("The server answered {status}.", {status: String(response.status)}));
          error.retry = response.status >= 500;
          throw error;
        }
        return json;
      });
    }, function () {
      var error = new Error(words("The server could not be reached."));
      error.retry = true;
      throw error;
    });
  }

  // The API's message about a row, in the page language when the words have it ("This
  // email is already on row 1.", an invalid email's); others are shown as they come.
  function apiText(message) {
    var row = /^This email is already on row (\d+)\.$/.exec(message || "");
    if (row) { return words("This email is already on row {row}.", {row: row[1]}); }
    if (message === "Enter a single valid email address, like name@example.com.") {
      return words("Enter a single valid email address, like name@example.com.");
    }
    return message;
  }

  // Why a rejected row is not invited (the results table's Reason).
  function reasonText(result) {
    if (result.reason === "already_has_access") { return words("Already has access"); }
    if (result.reason === "duplicate") {
      return words("Duplicate in the file: {message}", {message: apiText(result.message)});
    }
    if (result.reason === "invalid_email") {
      return words("Invalid email: {message}", {message: apiText(result.message)});
    }
    return result.message || result.reason;
  }

  function verdictText(result) {
    if (result.status === "created") { return words("Will invite"); }
    if (result.status === "resent") { return words("Will resend a pending invitation"); }
    if (["already_has_access", "duplicate", "invalid_email"].indexOf(result.reason) !== -1) {
      return reasonText(result);
    }
    return words("Will not invite: {reason}", {reason: reasonText(result)});
  }

  function resultText(result) {
    if (result.status === "created") { return words("Invited"); }
    if (result.status === "resent") { return words("Resent"); }
    return words("Not invited");
  }

  function fill(table, cells) {
    var tbody = table.tBodies[0];
    var fragment = document.createDocumentFragment();
    cells.forEach(function (values) {
      var tr = document.createElement("tr");
      values.forEach(function (value) {
        var td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    tbody.textContent = "";
    tbody.appendChild(fragment);
  }

  function count(list, test) {
    return list.filter(test).length;
  }

  function showPreview() {
    var invite = count(verdicts, function (r) { return r.status === "created"; });
    var resend = count(verdicts, function (r) { return r.status === "resent"; });
    var skipped = verdicts.length - invite - resend;
    el.summary.textContent = words("{rows} rows: {invite} will be invited, {resend} pending " +
      "invitations will be resent, {skipped} will not be invited.",
      {rows: rows.length, invite: invite, resend: resend, skipped: skipped}) +
      // A column named otherwise (First Name, Company) would be dropped without a word.
      (unread.length ? " " + words("Columns not read: {columns}. Only email, name, " +
        "personal_message and sub_client are read.", {columns: unread.join(", ")}) : "");
    fill(el.previewTable, verdicts.map(function (r, i) {
      return [String(i + 1), rows[i].email, rows[i].name || "", verdictText(r)];
    }));
    el.send.disabled = invite + resend === 0;
    el.preview.hidden = false;
    el.status.textContent = "";
    moveFocus(el.summary);
  }

  fileInput.addEventListener("change", function () {
    clear();
    var file = fileInput.files && fileInput.files[0];
    if (!file) { return; }
    if (!/\.csv$/i.test(file.name) && file.type !== "text/csv") {
      fail(words("The file is not a CSV file. Choose a .csv file."));
      return;
    }
    el.status.textContent = words("Reading {name}…", {name: file.name});
    file.arrayBuffer().then(function (buffer) {
      var text;
      try {
        // Strict UTF-8 (a BOM is dropped): anything else would garble names and addresses.
        text = new TextDecoder("utf-8", {fatal: true}).decode(buffer);
      } catch (e) {
        throw new Error(words("The file is not UTF-8 text. Save it as CSV UTF-8 and try again."));
      }
      rows = readRows(text);
      stopped = null;
      importId = (window.crypto && window.crypto.randomUUID) ? window.crypto.randomUUID() :
        String(Date.now()) + "-" + String(Math.random()).slice(2);
      el.status.textContent = words("Checking {count} rows…", {count: rows.length});
      var items = rows.map(function (row) { return payload(row); });
      return post({invitations: items}, true);
    }).then(function (answer) {
      verdicts = answer.results.map(function (result, i) {
        if (flag(rows[i].sub_client) === null && result.status !== "rejected") {
          return {row: i + 1, email: rows[i].email, status: "rejected", reason: "invalid_sub_client",
            message: words("sub_client must be true or false.")};
        }
        return result;
      });
      showPreview();
    }).catch(function (error) {
      fail(error.message);
    });
  });

  function sendPiece(items, attempt) {
    return post({invitations: items}, false).catch(function (error) {
      if (error.retry && attempt < 3) {
        // Each row carries its key, so sending the piece again sends nothing twice.
        return new Promise(function (resolve) { setTimeout(resolve, 1000 * attempt); })
          .then(function () { return sendPiece(items, attempt + 1); });
      }
      throw error;
    });
  }

  // A send that stopped on an error: Send Invitations goes on from the piece that failed,
  // with the same keys, so a piece the server took but whose answer was lost sends nothing
  // twice. Reading a file starts afresh.
  var stopped = null;

  // Leaving while pieces are still to send would leave the rest unsent, without results.
  function holdPage(event) {
    event.preventDefault();
    event.returnValue = "";
  }

  el.send.addEventListener("click", function () {
    el.send.disabled = true;
    fileInput.disabled = true;
    el.error.hidden = true;
    el.results.hidden = true;
    var run = stopped;
    stopped = null;
    if (!run) {
      run = {outcome: verdicts.slice(), todo: [], start: 0};
      verdicts.forEach(function (r, i) {
        if (r.status !== "rejected") { run.todo.push(i); }
      });
    }
    var todo = run.todo;
    function shown() {
      el.progress.value = run.start;
      el.progressText.textContent = words("{done} of {total} sent",
        {done: run.start, total: todo.length});
    }
    el.progress.max = todo.length;
    shown();
    el.progressBox.hidden = false;
    moveFocus(el.progressText);
    window.addEventListener("beforeunload", holdPage);
    function next() {
      if (run.start >= todo.length) { return Promise.resolve(); }
      var piece = todo.slice(run.start, run.start + PIECE);
      var items = piece.map(function (i) { return payload(rows[i], i + 1); });
      return sendPiece(items, 1).then(function (answer) {
        answer.results.forEach(function (result, k) {
          run.outcome[piece[k]] = Object.assign({}, result, {row: piece[k] + 1});
        });
        run.start += piece.length;
        shown();
        return next();
      });
    }
    next().then(function () {
      window.removeEventListener("beforeunload", holdPage);
      showResults(run.outcome);
      moveFocus(el.resultsSummary);
    }, function (error) {
      window.removeEventListener("beforeunload", holdPage);
      stopped = run;
      var why = words("Not sent: {error} Select Send Invitations again to send the rest; " +
        "rows already sent are not sent twice.", {error: error.message});
      var outcome = run.outcome.slice();
      todo.slice(run.start).forEach(function (i) {
        outcome[i] = {row: i + 1, email: rows[i].email, status: "rejected", reason: "not_sent",
          message: why};
      });
      fail(why);
      showResults(outcome);
      el.send.disabled = false;
      moveFocus(el.error);
    });
  });

  function csvCell(value) {
    var text = value === undefined || value === null ? "" : String(value);
    // A leading = + - @ would run as a formula in a spreadsheet.
    if (/^[=+\-@\t\r]/.test(text)) { text = "'" + text; }
    var quote = /["\r\n]/.test(text) || text.indexOf(delimiter) !== -1;
    return quote ? "\"" + text.replace(/"/g, "\"\"") + "\"" : text;
  }

  function showResults(outcome) {
    var invited = count(outcome, function (r) { return r.status === "created"; });
    var resent = count(outcome, function (r) { return r.status === "resent"; });
    el.resultsSummary.textContent = words("Done: {invited} invited, {resent} resent, " +
      "{skipped} not invited.", {invited: invited, resent: resent,
      skipped: outcome.length - invited - resent});
    fill(el.resultsTable, outcome.map(function (r, i) {
      return [String(i + 1), rows[i].email, resultText(r),
        r.status === "rejected" ? reasonText(r) : ""];
    }));
    var lines = [["row", "email", "name", "status", "invitation_id", "reason", "message"]
      .join(delimiter)];
    outcome.forEach(function (r, i) {
      lines.push([i + 1, rows[i].email, rows[i].name, r.status, r.invitation_id, r.reason,
        r.message].map(csvCell).join(delimiter));
    });
    var blob = new Blob(["\ufeff" + lines.join("\r\n") + "\r\n"], {type: "text/csv;charset=utf-8"});
    el.download.href = URL.createObjectURL(blob);
    el.progressBox.hidden = false;
    el.results.hidden = false;
    fileInput.disabled = false;
  }
}());
