// The search page's little script: drop, paste or choose an image and the search starts; the page works
// without it too (choose a file, press Search).
(function () {
  "use strict";
  const form = document.getElementById("search-form");
  if (!form) return;
  const file = form.querySelector("input[type=file]");
  const zone = document.getElementById("drop-zone");
  const preview = document.getElementById("drop-preview");
  const status = document.getElementById("status");
  const urlField = form.elements.namedItem("image_url");
  const textField = form.elements.namedItem("text");

  function searching() {
    status.textContent = "Searching…";
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  }

  // One kind of query at a time: the one just given wins.
  function useFile(picked) {
    if (!picked) return;
    if (file.files[0] !== picked) {
      const transfer = new DataTransfer();
      transfer.items.add(picked);
      file.files = transfer.files;
    }
    urlField.value = "";
    textField.value = "";
    if (picked.type.startsWith("image/")) {
      preview.src = URL.createObjectURL(picked);
      preview.hidden = false;
    }
    form.requestSubmit();
  }

  function clearFile() {
    file.value = "";
    preview.hidden = true;
  }

  file.addEventListener("change", function () { useFile(file.files[0]); });
  urlField.addEventListener("input", function () { if (urlField.value) { clearFile(); textField.value = ""; } });
  textField.addEventListener("input", function () { if (textField.value) { clearFile(); urlField.value = ""; } });
  form.addEventListener("submit", searching);

  // The whole page takes a drop (a browser would otherwise leave the page to show the dropped file).
  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    document.addEventListener(name, function () { zone.classList.remove("over"); });
  });
  document.addEventListener("drop", function (event) {
    event.preventDefault();
    const data = event.dataTransfer;
    if (data.files && data.files.length) {
      useFile(data.files[0]);
      return;
    }
    const link = (data.getData("text/uri-list") || data.getData("text/plain") || "").split("\n")[0].trim();
    if (/^https?:\/\//i.test(link)) {  // an image dragged from another page
      clearFile();
      textField.value = "";
      urlField.value = link;
      form.requestSubmit();
    }
  });

  document.addEventListener("paste", function (event) {
    const data = event.clipboardData;
    if (!data || !data.files || !data.files.length) return;  // pasted text goes where it was pasted
    event.preventDefault();
    useFile(data.files[0]);
  });

  document.querySelectorAll(".thumb img, .detail .large").forEach(function (img) {
    if (img.complete && img.naturalWidth === 0) img.classList.add("missing");  // failed before we looked
    img.addEventListener("error", function () { img.classList.add("missing"); });
  });
}());
