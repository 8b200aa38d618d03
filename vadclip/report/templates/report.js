function sortTable(th){const table=th.closest('table'),i=[...th.parentNode.children].indexOf(th);
const asc=!th.classList.contains('sorted-asc');table.querySelectorAll('th').forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));
th.classList.add(asc?'sorted-asc':'sorted-desc');const body=table.tBodies[0];
const rows=[...body.rows].sort((a,b)=>{const x=a.cells[i].dataset.v??a.cells[i].textContent,y=b.cells[i].dataset.v??b.cells[i].textContent;
const nx=parseFloat(x),ny=parseFloat(y);const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
rows.forEach(r=>body.appendChild(r));}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
window.addEventListener('load',()=>{const imgs=[...document.images];
const broken=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.getAttribute('src'));
document.body.dataset.imagesTotal=imgs.length;document.body.dataset.imagesBroken=broken.length;
if(broken.length){const b=document.getElementById('broken');b.style.display='block';b.textContent='Missing images: '+broken.join(', ');}});
